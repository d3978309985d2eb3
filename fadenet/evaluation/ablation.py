"""The ablation of notebook 04: the additive and leave-one-out variants of
:mod:`fadenet.model.variants` trained with each seed of ``eval.seeds`` under one budget, and the tables made from the runs.

The budget ``eval.ablation_budget`` (b, at most 1) is the share of the training split each run
learns from: a fixed age-stratified fraction b of it (``train.fraction``), with the profile's
recipe otherwise unchanged and the same validation and test faces. b = 1 is notebook 03's
training, so there the profile's own model is one of the grid's runs and is not trained twice.
A run is identified by its resolved config, so a re-run after an interruption trains only what
is missing (and resumes the run that was cut off).
"""
from __future__ import annotations


from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from ..config import Config
from ..data import FaceSet, Split
from ..model import count_macs, count_parameters
from ..model.variants import ABLATION, LEAVE_ONE_OUT, names, variant, variant_config
from ..resolve import resolve
from ..training import Run, train
from .metrics import bootstrap_mean, median_predictor_mae


def ablation_config(cfg: Config, variant: str, seed: int) -> Config:
    """The profile's config with the variant's switches, the seed and the ablation budget."""
    return variant_config(variant, cfg).override({"train.seed": seed, "train.fraction": cfg.eval.ablation_budget})


def run_grid(cfg: Config, faces: FaceSet, split: Split, variants=tuple(names(ABLATION, LEAVE_ONE_OUT)),
             seeds=None, progress: bool = True) -> pd.DataFrame:
    """Train (or reuse) every variant x seed; one row per run. Seed by seed, so that an
    interrupted grid already holds a whole single-seed ablation."""
    seeds = cfg.eval.seeds if seeds is None else seeds
    jobs = [(v, s) for s in seeds for v in variants]
    rows = []
    for name, seed in tqdm(jobs, desc="ablation runs", unit="run", disable=not progress):
        run = train(ablation_config(cfg, name, seed), faces, split, progress=progress)
        rows.append(run_row(name, seed, run))
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
    for name, group in runs.groupby("variant", sort=False):
        model = variant_network(cfg, name)
        rows.append({"variant": name, "description": variant(name).description,
                     "backbone": group["backbone"].iloc[0], "init": "/".join(sorted(set(group["init"]))),
                     "parameters": count_parameters(model),
                     f"M multiply-adds @{size}px": round(count_macs(model, size) / 1e6, 1),
                     "seeds": len(group), "test MAE mean": group["test MAE"].mean(),
                     "test MAE std": group["test MAE"].std(ddof=1) if len(group) > 1 else np.nan,
                     "val MAE mean": group["val MAE"].mean(), "minutes per run": group["minutes"].mean()})
    return pd.DataFrame(rows)


def variant_network(cfg: Config, name: str):
    """The variant's network on the backbone its runs train (``auto`` resolved as in training),
    with random weights: sizes and costs do not depend on weights."""
    return resolve(ablation_config(cfg, name, 0)).network(weights=False)


def median_floor(faces: FaceSet, split: Split) -> float:
    """The test MAE of predicting the training median: what a model that learnt nothing scores."""
    return median_predictor_mae(faces.ages[split.test], faces.ages[split.train])


def learnt(table: pd.DataFrame, floor: float) -> list[str]:
    """Which variants learnt anything: beat the median-age predictor by more than their own seed
    spread (at least 0.1 years)."""
    lines = []
    for name, row in table.set_index("variant").iterrows():
        one = np.isnan(row["test MAE std"])
        spread = 0.0 if one else row["test MAE std"]
        verdict = "learnt" if row["test MAE mean"] < floor - max(spread, 0.1) else "did not beat the median-age predictor"
        mae = f"{row['test MAE mean']:.2f}" + (" (1 seed)" if one else f" ± {spread:.2f}")
        lines.append(f"{name}: test MAE {mae}; {verdict} ({floor:.2f}).")
    return lines


def paired_effects(runs: pd.DataFrame, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each idea's effect on test MAE, MAE(with it) - MAE(without it), from seed-paired runs: an
    added idea against the run it is added to, a left-out idea against full FADE-Net.

    Two intervals at ``level``: a t-interval over the seeds' differences (n = paired seeds, at
    least 2), and a bootstrap over test faces (the same resampled faces for both runs of a pair,
    the pairs' differences averaged), which also serves a single seed. The bootstrap needs each
    run's ``test_predictions.csv``; without them it is left empty."""
    by_variant = {name: group.set_index("seed") for name, group in runs.groupby("variant", sort=False)}
    face_errors = {path: _face_errors(path) for path in runs["checkpoint"]}  # each file read once
    rows = []
    for name in by_variant:
        v = variant(name)
        if v.reference is None or v.reference not in by_variant:
            continue
        with_idea, without = (name, v.reference) if v.group == ABLATION else (v.reference, name)
        seeds = sorted(set(by_variant[with_idea].index) & set(by_variant[without].index))
        if not seeds:
            continue
        diffs = np.array([by_variant[with_idea].loc[s, "test MAE"] - by_variant[without].loc[s, "test MAE"]
                          for s in seeds], dtype=float)
        t_low, t_high = t_interval(diffs, level)
        errors = [(face_errors[by_variant[with_idea].loc[s, "checkpoint"]],
                   face_errors[by_variant[without].loc[s, "checkpoint"]]) for s in seeds]
        b_low, b_high = (bootstrap_interval(errors, level, resamples, seed)
                         if all(a is not None and b is not None for a, b in errors) else (np.nan, np.nan))
        rows.append({"idea": _idea(name, v), "with": with_idea, "without": without, "seeds": len(seeds),
                     "effect (years)": float(diffs.mean()), "t low": t_low, "t high": t_high,
                     "bootstrap low": b_low, "bootstrap high": b_high})
    table = pd.DataFrame(rows)
    if len(table):
        table["finding"] = [effect_sentence(r) for r in table.to_dict("records")]
    return table


def t_interval(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of ``diffs`` (NaN with fewer than two values)."""
    n = len(diffs)
    if n < 2:
        return np.nan, np.nan
    half = stats.t.ppf(0.5 + level / 2, n - 1) * diffs.std(ddof=1) / np.sqrt(n)
    return float(diffs.mean() - half), float(diffs.mean() + half)


def bootstrap_interval(pairs: list[tuple[np.ndarray, np.ndarray]], level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(|error with|) - mean(|error without|), averaged over the pairs,
    resampling test faces (one draw of faces shared by every pair: they saw the same test set)."""
    n = len(pairs[0][0])
    if any(len(a) != n or len(b) != n for a, b in pairs):
        raise ValueError("paired runs must be scored on the same test faces")
    gap = np.mean([np.abs(a) - np.abs(b) for a, b in pairs], axis=0)
    return bootstrap_mean(gap, level, resamples, seed)


def effect_sentence(row: dict) -> str:
    """The finding an interval supports: which interval is used is named in the sentence."""
    if row["seeds"] >= 2:
        low, high, how = row["t low"], row["t high"], f"95% CI over {row['seeds']} seeds"
    else:
        low, high, how = row["bootstrap low"], row["bootstrap high"], "95% bootstrap CI over test faces, 1 seed"
    x = row["effect (years)"]
    if np.isnan(low):
        return f"{row['idea']}: {x:+.2f} years (no interval: one seed and no per-face predictions)"
    interval = f"{how}: {low:+.2f} to {high:+.2f}"
    if high < 0:
        return f"{row['idea']} lowers MAE by {-x:.2f} years ({interval})"
    if low > 0:
        return f"{row['idea']} raises MAE by {x:.2f} years ({interval})"
    return f"{row['idea']}: no effect detectable at this budget ({x:+.2f} years, {interval})"


def effects_summary(effects: pd.DataFrame) -> pd.DataFrame:
    """One row per idea: its effect and the 95% interval its sentence uses, and which one that is."""
    several = effects["seeds"] >= 2
    return pd.DataFrame({
        "idea": effects["idea"], "seeds": effects["seeds"], "effect (years)": effects["effect (years)"],
        "95% low": np.where(several, effects["t low"], effects["bootstrap low"]),
        "95% high": np.where(several, effects["t high"], effects["bootstrap high"]),
        "interval": np.where(several, "t over seeds", "bootstrap over test faces")})


def _idea(name: str, v) -> str:
    if name == "fadenet":
        return "all four ideas (FADE-Net against the baseline)"
    word = name[1:]
    return f"{word} ({'the baseline with it against without' if v.group == ABLATION else 'FADE-Net with it against without'})"


def _face_errors(checkpoint: str) -> np.ndarray | None:
    path = Path(checkpoint).parent / "test_predictions.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path).sort_values("row")
    return (table["predicted"] - table["age"]).to_numpy(dtype=float)


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
