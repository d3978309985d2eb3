"""Chapter 03's time-to-accuracy study: recipes compared at equal training compute.

A recipe is a file of config overrides under ``configs/recipes/``; a budget is training compute
in epoch-equivalents (:mod:`fadenet.training.budget`), turned into the number of epochs whose
compute comes closest to it. Every choice is made on validation MAE; the test split is not read
here. Runs are found again by their resolved config, so an interrupted study trains only what
is missing.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from tqdm.auto import tqdm

from ..config import Config, read_levers, read_recipe, recipe_title
from ..data import FaceSet, Split
from ..resolve import resolve
from ..training import load_run, train
from ..training.budget import ComputeMeter, stage_size


def compute_meter(cfg: Config, train_faces: int) -> ComputeMeter:
    """The compute meter of ``cfg``'s network (random weights: the cost does not depend on them)."""
    return ComputeMeter(resolve(cfg).network(weights=False), train_faces)


def planned_epoch_equivalents(cfg: Config, epochs: int, meter: ComputeMeter) -> float:
    """The compute ``epochs`` epochs of ``cfg`` will cost (its sizes, share of the split, batch)."""
    images = (max(1, round(cfg.train.fraction * meter.train_faces)) // cfg.train.batch_size) * cfg.train.batch_size
    return sum(meter.epoch_equivalents(images, stage_size(cfg.train.sizes, e, epochs, cfg.data.size))
               for e in range(epochs))


def epochs_for_budget(cfg: Config, budget: float, meter: ComputeMeter) -> int:
    """The number of epochs whose compute comes closest to ``budget`` epoch-equivalents."""
    best, best_gap = 1, float("inf")
    for epochs in range(1, int(4 * budget / max(cfg.train.fraction, 1e-3)) + 2):
        gap = abs(planned_epoch_equivalents(cfg, epochs, meter) - budget)
        if gap < best_gap:
            best, best_gap = epochs, gap
        elif gap > best_gap:  # compute grows with the epochs: past the closest it only gets further
            break
    return best


def budget_config(cfg: Config, overrides: dict, budget: float, seed: int, train_faces: int) -> Config:
    """``cfg`` with the recipe's overrides, the seed, and the epochs that spend ``budget``; a
    budget below one epoch is one epoch of a fixed age-stratified share of the split."""
    run_cfg = cfg.replaced(overrides, {"train.seed": seed, "train.fraction": 1.0})
    meter = compute_meter(run_cfg, train_faces)
    one_epoch = planned_epoch_equivalents(run_cfg, 1, meter)
    if budget < one_epoch:
        return run_cfg.override({"train.epochs": 1, "train.fraction": budget / one_epoch})
    return run_cfg.override({"train.epochs": epochs_for_budget(run_cfg, budget, meter)})


def run_row(run, **labels) -> dict:
    m = run.meta
    return {**labels, "epochs": m["epochs_done"], "epoch_equivalents": round(m["epoch_equivalents"], 3),
            "val_mae": m["best_val_mae"], "best_epoch": m["best_epoch"],
            "minutes": round(m["train_seconds"] / 60, 2), "run": m["run_id"]}


def lever_runs(cfg: Config, faces: FaceSet, split: Split, base: str, budget: float, seed: int,
               tried: dict[str, dict] | None = None, progress: bool = True) -> pd.DataFrame:
    """The base recipe and each lever (by default those of ``levers.yaml``) on top of it, one run
    each at ``budget``: validation MAE and its difference from the base recipe's (negative: the
    lever helps)."""
    base_keys = read_recipe(base)
    tried = read_levers() if tried is None else tried
    jobs = {base: base_keys, **{name: {**base_keys, **keys} for name, keys in tried.items()}}
    rows = []
    for name, keys in tqdm(jobs.items(), desc="levers", unit="run", disable=not progress):
        run = train(budget_config(cfg, keys, budget, seed, len(split.train)), faces, split, progress=progress)
        changed = {k: v for k, v in keys.items() if k not in base_keys or base_keys[k] != v}
        rows.append(run_row(run, lever=name, keys=", ".join(f"{k}: {v}" for k, v in changed.items()),
                            budget=budget, seed=seed))
    table = pd.DataFrame(rows)
    table["val_mae_vs_base"] = table["val_mae"] - table["val_mae"].iloc[0]
    return table


def recipe_runs(cfg: Config, faces: FaceSet, split: Split, recipes: list[str], budgets: list[float],
                seeds: list[int], progress: bool = True) -> pd.DataFrame:
    """Every recipe x budget x seed, smallest budget first and seed by seed within it (an
    interrupted study has whole budgets, and each seed of a budget for every recipe); one row a run."""
    jobs = [(b, r, s) for b in sorted(budgets) for s in seeds for r in recipes]
    rows = []
    for budget, name, seed in tqdm(jobs, desc="time to accuracy", unit="run", disable=not progress):
        run = train(budget_config(cfg, read_recipe(name), budget, seed, len(split.train)), faces, split, progress=progress)
        rows.append(run_row(run, recipe=name, budget=budget, seed=seed))
    return pd.DataFrame(rows)


def time_to_accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Validation MAE of each recipe at each budget over its seeds."""
    grouped = runs.groupby(["recipe", "budget"], sort=False)
    return pd.DataFrame({
        "epoch_equivalents": grouped["epoch_equivalents"].mean().round(3),
        "val_mae_mean": grouped["val_mae"].mean(), "val_mae_std": grouped["val_mae"].std(ddof=1),
        "seeds": grouped["seed"].nunique()}).reset_index().drop(columns="budget")


def time_to_accuracy_figure(runs: pd.DataFrame, cfg: Config) -> plt.Figure:
    """Left: best validation MAE against training compute, each recipe's mean over seeds with
    its seeds' range. Right: validation MAE after every epoch of each recipe's longest runs."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, (name, group) in enumerate(runs.groupby("recipe", sort=False)):
        color, title = f"C{i}", recipe_title(name)
        by_budget = group.groupby("budget")
        x, y = by_budget["epoch_equivalents"].mean(), by_budget["val_mae"].mean()
        left.errorbar(x, y, yerr=[y - by_budget["val_mae"].min(), by_budget["val_mae"].max() - y],
                      fmt="o-", color=color, capsize=3, label=f"{title} ({group['seed'].nunique()} seeds)")
        longest = group[group["budget"] == group["budget"].max()]
        for k, run_id in enumerate(longest["run"]):
            h = load_run(cfg.runs_path / run_id).history
            right.plot(h["epoch_equivalents"], h["val_mae"], "o-", color=color, alpha=0.8, ms=3,
                       label=title if k == 0 else None)
    left.set(xlabel="training compute (epochs of the training split at 112 px)",
             ylabel="best validation MAE (years)", title="Validation MAE for the compute spent")
    right.set(xlabel="training compute so far (epochs at 112 px)", ylabel="validation MAE (years)",
              title="Each epoch of the longest runs")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def lever_findings(levers_table: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """Each lever's change of validation MAE, measured against the seed-to-seed spread of the
    base recipe at the same budget (where the study ran it with several seeds)."""
    base = levers_table.iloc[0]
    same = runs[(runs["recipe"] == base["lever"]) & (runs["budget"] == base["budget"])]
    spread = same["val_mae"].std(ddof=1) if same["seed"].nunique() > 1 else float("nan")
    noise = (f"two seeds of the base recipe at this budget differ by a standard deviation of {spread:.3f}"
             if spread == spread else "the base recipe ran with one seed here, so the noise is not measured")
    lines = [f"Base ({recipe_title(base['lever'])}, {base['epoch_equivalents']:.2f} epoch-equivalents, "
             f"seed {base['seed']}): validation MAE {base['val_mae']:.3f}; {noise}."]
    for row in levers_table.iloc[1:].sort_values("val_mae_vs_base").itertuples():
        lines.append(f"{row.lever}: {row.val_mae:.3f} ({row.val_mae_vs_base:+.3f}, "
                     f"{row.epoch_equivalents:.2f} epoch-equivalents)")
    return lines


def recipe_findings(table: pd.DataFrame) -> list[str]:
    """Per budget, the recipes' mean validation MAE and which is lower by how much."""
    lines = []
    for budget, group in table.groupby(table["epoch_equivalents"].round(0), sort=True):
        ranked = group.sort_values("val_mae_mean")
        parts = [f"{recipe_title(r.recipe)} {r.val_mae_mean:.3f} ± {r.val_mae_std:.3f} "
                 f"({r.seeds} seeds, {r.epoch_equivalents:.2f})" for r in ranked.itertuples()]
        gap = ranked["val_mae_mean"].iloc[-1] - ranked["val_mae_mean"].iloc[0] if len(ranked) > 1 else float("nan")
        lines.append(f"About {budget:g} epoch-equivalents: " + "; ".join(parts)
                     + (f"; the first is lower by {gap:.3f}." if gap == gap else "."))
    return lines


def chapter_summary(meta: dict, curve: pd.DataFrame) -> str:
    """What chapter 03 found, from its run's record (``run.meta``) and the time-to-accuracy table:
    the model's best validation epoch, its test MAE (read once), its compute, and per budget which
    recipe reached the lower validation MAE."""
    lines = [f"- The model reaches validation MAE {meta['best_val_mae']:.3f} at epoch {meta['best_epoch']} of "
             f"{meta['epochs_done']} ({meta['epoch_equivalents']:.2f} epoch-equivalents, "
             f"{meta['trained_on']:,} training faces at {meta['size']} px); the test MAE of those weights, "
             f"without TTA, is {meta['test_mae']:.3f}."]
    lines += [f"- {line}" for line in recipe_findings(curve)]
    return "\n".join(lines)
