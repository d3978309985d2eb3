"""What later chapters take from chapter 04's factorial (:mod:`fadenet.evaluation.factorial`):
FADE-Net's trained runs, one per seed, for chapter 05's test-time augmentation and ensembles;
the network the factorial rates best on validation, for chapter 05's split protocols; and the
median-age floor every table is read against.

Every run is the factorial's own (same resolved config, so the same run folder), trained here
only when that folder is missing.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import Config
from ..data import FaceSet, Split
from ..training import train
from .factorial import FADENET, IDEAS, cell_config, cell_name, run_factorial
from .metrics import median_predictor_mae

def seed_runs(cfg: Config, faces: FaceSet, split: Split, cell: dict[str, bool] = FADENET, seeds=None,
              progress: bool = True) -> pd.DataFrame:
    """The runs of one factorial cell with each seed of ``seeds`` (default ``eval.seeds``),
    trained or reused; one row per seed with its scores and best checkpoint."""
    rows = []
    for seed in tqdm(cfg.eval.seeds if seeds is None else seeds, desc=f"{cell_name(cell)} runs", unit="run",
                     disable=not progress):
        run = train(cell_config(cfg, cell, seed), faces, split, progress=progress)
        m = run.meta
        rows.append({"network": cell_name(cell), "seed": seed, "backbone": m["backbone"], "init": m["pretrained"],
                     "parameters": m["parameters"],
                     "trained on": m["trained_on"], "epochs": m["epochs_done"], "val MAE": m["best_val_mae"],
                     "test MAE": m["test_mae"], "minutes": round(m["train_seconds"] / 60, 2), "run": m["run_id"],
                     "checkpoint": str(run.best)})
    return pd.DataFrame(rows)


def best_by_validation(cfg: Config, faces: FaceSet, split: Split) -> dict[str, bool]:
    """The factorial's cell with the lowest mean validation MAE over its seeds (test plays no part)."""
    runs = run_factorial(cfg, faces, split)
    means = runs.groupby(list(IDEAS))["val_mae"].mean()
    return dict(zip(means.index.names, map(bool, means.idxmin())))


def median_floor(faces: FaceSet, split: Split) -> float:
    """The test MAE of predicting the training median: what a model that learnt nothing scores."""
    return median_predictor_mae(faces.ages[split.test], faces.ages[split.train])


def protocol_runs(cfg: Config, faces: FaceSet, cell: dict[str, bool], seed: int = 42,
                  progress: bool = True) -> pd.DataFrame:
    """Test MAE of one factorial cell and seed on each of the five kfold rotations and on the
    stratified split of ``cfg``, the latter twice: with its whole training part, and with that
    part subsampled (age-stratified) to the kfold rotations' number of training faces, the row
    the kfold mean is comparable with. Then the kfold mean and std."""
    from ..data import load_split

    def row(protocol: str, rotation, run_cfg: Config) -> dict:
        split = load_split(faces, run_cfg)
        run = train(run_cfg, faces, split, progress=progress)
        return {"protocol": protocol, "rotation": rotation, "training faces": run.meta["trained_on"],
                "train / val / test faces": f"{run.meta['trained_on']:,} / {len(split.val):,} / {len(split.test):,}",
                "test MAE": run.meta["test_mae"],
                "median-age predictor": median_predictor_mae(faces.ages[split.test], faces.ages[split.train]),
                "epoch_equivalents": round(run.meta["epoch_equivalents"], 3),
                "minutes": round(run.meta["train_seconds"] / 60, 2), "run": run.folder.name}

    base = cell_config(cfg, cell, seed)
    kfold = [row("kfold", r, base.replaced({"data.split": "kfold", "data.fold": r})) for r in range(5)]
    whole = row(cfg.data.split, "", base)
    share = np.mean([r["training faces"] for r in kfold]) / whole["training faces"]
    matched = row(f"{cfg.data.split}, training faces as many as kfold's", "",
                  base.replaced({"train.fraction": base.train.fraction * share}))
    table = pd.DataFrame([whole, matched, *kfold])
    k = table[table["protocol"] == "kfold"]
    summary_row = {"protocol": "kfold", "rotation": "mean ± std", "training faces": round(k["training faces"].mean()),
                   "train / val / test faces": "",
                   "test MAE": f"{k['test MAE'].mean():.3f} ± {k['test MAE'].std(ddof=1):.3f}",
                   "median-age predictor": k["median-age predictor"].mean(), "epoch_equivalents": None,
                   "minutes": None, "run": ""}
    table["test MAE"] = table["test MAE"].map(lambda v: f"{v:.3f}")
    return pd.concat([table, pd.DataFrame([summary_row])], ignore_index=True).drop(columns=["training faces"])
