"""Chapter 03's time-to-accuracy study: recipes compared at equal training compute.

A recipe is a file of config overrides under ``configs/recipes/``; a budget is training compute
in epoch-equivalents (:mod:`fadenet.training.budget`), turned into the number of epochs whose
compute comes closest to it. Every choice is made on validation MAE; the test split is not read
here. Runs are found again by their resolved config, so an interrupted study trains only what
is missing.
"""
from __future__ import annotations

import copy

import pandas as pd
from tqdm.auto import tqdm

from ..config import CONFIGS, Config, ConfigError, _flatten, _read_yaml
from ..data import FaceSet, Split
from ..model import build_model, resolve_backbone
from ..training import train
from ..training.budget import ComputeMeter, stage_size

RECIPES = CONFIGS / "recipes"


def recipe(name: str) -> dict:
    """The overrides of ``configs/recipes/<name>.yaml``, as flat ``section.key`` pairs."""
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
        raise ConfigError(f"recipe {name!r} is not a file under {RECIPES} (there: {known})")
    return _flatten(_read_yaml(path))


def levers() -> dict[str, dict]:
    """The levers of ``configs/recipes/levers.yaml``: name -> the keys it sets."""
    return {name: dict(keys) for name, keys in _read_yaml(RECIPES / "levers.yaml").items()}


def planned_epoch_equivalents(cfg: Config, epochs: int, train_faces: int) -> float:
    """The compute ``epochs`` epochs of ``cfg`` will cost (its sizes, share of the split, batch)."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone, model_cfg.pretrained = resolve_backbone(model_cfg), "none"
    meter = ComputeMeter(build_model(model_cfg), train_faces)
    images = (max(1, round(cfg.train.fraction * train_faces)) // cfg.train.batch_size) * cfg.train.batch_size
    return sum(meter.epoch_equivalents(images, stage_size(cfg.train.sizes, e, epochs, cfg.data.size))
               for e in range(epochs))


def epochs_for_budget(cfg: Config, budget: float, train_faces: int) -> int:
    """The number of epochs whose compute comes closest to ``budget`` epoch-equivalents."""
    best, best_gap = 1, float("inf")
    for epochs in range(1, int(4 * budget / max(cfg.train.fraction, 1e-3)) + 2):
        gap = abs(planned_epoch_equivalents(cfg, epochs, train_faces) - budget)
        if gap < best_gap:
            best, best_gap = epochs, gap
        elif gap > best_gap:  # compute grows with the epochs: past the closest it only gets further
            break
    return best


def budget_config(cfg: Config, overrides: dict, budget: float, seed: int, train_faces: int) -> Config:
    """``cfg`` with the recipe's overrides, the seed, and the epochs that spend ``budget``; a
    budget below one epoch is one epoch of a fixed age-stratified share of the split."""
    run_cfg = copy.deepcopy(cfg).override(overrides, {"train.seed": seed, "train.fraction": 1.0})
    one_epoch = planned_epoch_equivalents(run_cfg, 1, train_faces)
    if budget < one_epoch:
        return run_cfg.override({"train.epochs": 1, "train.fraction": budget / one_epoch})
    return run_cfg.override({"train.epochs": epochs_for_budget(run_cfg, budget, train_faces)})


def run_row(run, **labels) -> dict:
    m = run.meta
    return {**labels, "epochs": m["epochs_done"], "epoch_equivalents": round(m["epoch_equivalents"], 3),
            "val_mae": m["best_val_mae"], "best_epoch": m["best_epoch"],
            "minutes": round(m["train_seconds"] / 60, 2), "run": m["run_id"]}


def lever_runs(cfg: Config, faces: FaceSet, split: Split, base: str, budget: float, seed: int,
               progress: bool = True) -> pd.DataFrame:
    """The base recipe and each lever on top of it, one run each at ``budget``: validation MAE
    and its difference from the base recipe's (negative: the lever helps)."""
    base_keys = recipe(base)
    jobs = {base: base_keys, **{name: {**base_keys, **keys} for name, keys in levers().items()}}
    rows = []
    for name, keys in tqdm(jobs.items(), desc="levers", unit="run", disable=not progress):
        run = train(budget_config(cfg, keys, budget, seed, len(split.train)), faces, split, progress=progress)
        changed = {k: v for k, v in keys.items() if k not in base_keys or base_keys[k] != v}
        rows.append(run_row(run, lever=name, keys=", ".join(f"{k}={v}" for k, v in changed.items()), seed=seed))
    table = pd.DataFrame(rows)
    table["val_mae_vs_base"] = table["val_mae"] - table["val_mae"].iloc[0]
    return table


def recipe_runs(cfg: Config, faces: FaceSet, split: Split, recipes: list[str], budgets: list[float],
                seeds: list[int], progress: bool = True) -> pd.DataFrame:
    """Every recipe x budget x seed, smallest budget first (an interrupted study has whole
    budgets); one row per run."""
    jobs = [(b, r, s) for b in sorted(budgets) for r in recipes for s in seeds]
    rows = []
    for budget, name, seed in tqdm(jobs, desc="time to accuracy", unit="run", disable=not progress):
        run = train(budget_config(cfg, recipe(name), budget, seed, len(split.train)), faces, split, progress=progress)
        rows.append(run_row(run, recipe=name, budget=budget, seed=seed))
    return pd.DataFrame(rows)


def time_to_accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Validation MAE of each recipe at each budget over its seeds."""
    grouped = runs.groupby(["recipe", "budget"], sort=False)
    return pd.DataFrame({
        "epoch_equivalents": grouped["epoch_equivalents"].mean().round(3),
        "val_mae_mean": grouped["val_mae"].mean(), "val_mae_std": grouped["val_mae"].std(ddof=1),
        "seeds": grouped["seed"].nunique()}).reset_index().drop(columns="budget")
