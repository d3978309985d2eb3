"""The ablation of notebook 04: every variant of :data:`fadenet.model.report.ABLATION_VARIANTS`
trained with each seed of ``eval.seeds`` under one budget, and the tables made from the runs.

The budget ``eval.ablation_budget`` (b, at most 1) is the share of the training split each run
learns from: a fixed age-stratified fraction b of it (``train.fraction``), with the profile's
recipe otherwise unchanged and the same validation and test faces. b = 1 is notebook 03's
training, so there the profile's own model is one of the grid's runs and is not trained twice.
A run is identified by its resolved config, so a re-run after an interruption trains only what
is missing (and resumes the run that was cut off).
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import Config
from ..data import FaceSet, Split
from ..model import build_model, count_macs
from ..model.report import ABLATION_VARIANTS, DESCRIPTIONS
from ..training import Run, train
from .metrics import median_predictor_mae


def ablation_config(cfg: Config, variant: str, seed: int) -> Config:
    """The profile's config with the variant's switches, the seed and the ablation budget."""
    if variant not in ABLATION_VARIANTS:
        raise KeyError(f"no ablation variant {variant!r}; known: {', '.join(ABLATION_VARIANTS)}")
    return copy.deepcopy(cfg).override(ABLATION_VARIANTS[variant], {
        "train.seed": seed, "train.fraction": cfg.eval.ablation_budget})


def run_grid(cfg: Config, faces: FaceSet, split: Split, variants=tuple(ABLATION_VARIANTS),
             seeds=None, progress: bool = True) -> pd.DataFrame:
    """Train (or reuse) every variant x seed; one row per run."""
    seeds = cfg.eval.seeds if seeds is None else seeds
    jobs = [(v, s) for v in variants for s in seeds]
    rows = []
    for variant, seed in tqdm(jobs, desc="ablation runs", unit="run", disable=not progress):
        run = train(ablation_config(cfg, variant, seed), faces, split, progress=progress)
        rows.append(run_row(variant, seed, run))
    return pd.DataFrame(rows)


def run_row(variant: str, seed: int, run: Run) -> dict:
    m = run.meta
    return {"variant": variant, "seed": seed, "backbone": m["backbone"], "init": m["pretrained"],
            "trained on": m["trained_on"], "epochs": m["epochs_done"], "val MAE": m["best_val_mae"],
            "test MAE": m["test_mae"], "minutes": round(m["train_seconds"] / 60, 2), "run": m["run_id"],
            "checkpoint": str(run.best)}


def ablation_table(runs: pd.DataFrame, cfg: Config, size: int = 224) -> pd.DataFrame:
    """One row per variant: what it is, its size and cost, and its test MAE over the seeds."""
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        model = variant_network(cfg, variant)
        rows.append({"variant": variant, "description": DESCRIPTIONS[variant],
                     "backbone": group["backbone"].iloc[0], "init": "/".join(sorted(set(group["init"]))),
                     "parameters": sum(p.numel() for p in model.parameters()),
                     f"M multiply-adds @{size}px": round(count_macs(model, size) / 1e6, 1),
                     "seeds": len(group), "test MAE mean": group["test MAE"].mean(),
                     "test MAE std": group["test MAE"].std(ddof=1) if len(group) > 1 else np.nan,
                     "val MAE mean": group["val MAE"].mean(), "minutes per run": group["minutes"].mean()})
    return pd.DataFrame(rows)


def variant_network(cfg: Config, variant: str):
    """The variant's network with random weights: sizes and costs do not depend on weights."""
    model_cfg = ablation_config(cfg, variant, 0).model
    model_cfg.pretrained = "none"
    return build_model(model_cfg)


def median_floor(faces: FaceSet, split: Split) -> float:
    """The test MAE of predicting the training median: what a model that learnt nothing scores."""
    return median_predictor_mae(faces.ages[split.test], faces.ages[split.train])


def findings(table: pd.DataFrame, floor: float) -> list[str]:
    """Plain sentences read off the table: each idea against the baseline, judged against the
    spread between seeds, and which variants learnt anything at all (beat the median predictor
    by more than their own seed spread)."""
    rows = table.set_index("variant")
    lines = []
    for variant, row in rows.iterrows():
        spread = 0.0 if np.isnan(row["test MAE std"]) else row["test MAE std"]
        learnt = row["test MAE mean"] < floor - max(spread, 0.1)
        lines.append(f"{variant}: test MAE {row['test MAE mean']:.2f} ± {spread:.2f}; "
                     + ("learnt" if learnt else "did not beat the median-age predictor") + f" ({floor:.2f}).")
    pairs = [(v, "baseline") for v in rows.index if v.startswith("+") or v == "fadenet"]
    pairs.append(("fadenet_mbv2", "baseline_mbv2"))
    for variant, reference in pairs:
        if variant not in rows.index or reference not in rows.index:
            continue
        row, base = rows.loc[variant], rows.loc[reference]
        delta = row["test MAE mean"] - base["test MAE mean"]
        spread = np.nanmax([row["test MAE std"], base["test MAE std"], 0.0])
        verdict = ("better than" if delta < -spread else "worse than" if delta > spread
                   else "no different, within the seed spread, from")
        lines.append(f"{variant} vs {reference}: {delta:+.2f} years, {verdict} {reference} "
                     f"(seed spread {spread:.2f}).")
    return lines


def protocol_runs(cfg: Config, faces: FaceSet, variant: str, seed: int = 42, progress: bool = True) -> pd.DataFrame:
    """Test MAE of one variant and seed, under the ablation budget, on the stratified split of
    ``cfg`` and on each of the five kfold rotations, with the kfold mean and std."""
    from ..data import load_split
    rows = []
    for protocol, fold in [(cfg.data.split, 0)] + [("kfold", r) for r in range(5)]:
        run_cfg = ablation_config(cfg, variant, seed).override({"data.split": protocol, "data.fold": fold})
        split = load_split(faces, run_cfg)
        run = train(run_cfg, faces, split, progress=progress)
        rows.append({"protocol": protocol, "rotation": fold if protocol == "kfold" else "",
                     "train / val / test faces": f"{run.meta['trained_on']:,} / {len(split.val):,} / {len(split.test):,}",
                     "test MAE": run.meta["test_mae"],
                     "median-age predictor": median_predictor_mae(faces.ages[split.test], faces.ages[split.train])})
    table = pd.DataFrame(rows)
    kfold = table[table["protocol"] == "kfold"]
    summary_row = {"protocol": "kfold", "rotation": "mean ± std", "train / val / test faces": "",
                   "test MAE": f"{kfold['test MAE'].mean():.3f} ± {kfold['test MAE'].std(ddof=1):.3f}",
                   "median-age predictor": kfold["median-age predictor"].mean()}
    table["test MAE"] = table["test MAE"].map(lambda v: f"{v:.3f}")
    return pd.concat([table, pd.DataFrame([summary_row])], ignore_index=True)
