"""The 2^4 factorial ablation of chapter 04: coordinate attention, multi-scale fusion, SPP and the
DLDL-v2 loss, each on or off, all 16 networks trained with each seed of ``eval.factorial_seeds``
on the profile's recipe and training faces.

Every training counts for every idea: an idea's main effect is the mean test MAE of the 16 runs
with it minus that of the 16 without, and a two-way interaction is how much one idea's effect
changes when the other is on. Both come from one linear model (:func:`effects`), fitted with
statsmodels on switches coded -1/2 and +1/2 (so that its coefficients are exactly these
differences) with the seed as a block; a hierarchical bootstrap over runs and test faces gives a
second interval beside it.

Each finished run leaves its row and its per-face test predictions in ``<figures>/predictions/``
under the run's identity (its resolved config's hash), so that a fresh clone recomputes every
number of the chapter from git, and carries on an interrupted study without training again what
it already holds.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from ..config import Config
from ..data import FaceSet, Split
from ..io import atomic_path, atomic_write_text
from ..resolve import resolve
from ..training import train
from ..training.recipe import training_rows
from .report import budget_text

# the four ideas: the column a run's row names them by, the config key that switches each, and
# the words a reader says
IDEAS = {"ca": ("model.ca", "coordinate attention"), "msff": ("model.msff", "multi-scale fusion"),
         "spp": ("model.spp", "SPP"), "dldl_v2": ("loss.dldl_v2", "the DLDL-v2 loss")}
TERMS = list(IDEAS) + [f"{a}:{b}" for a, b in itertools.combinations(IDEAS, 2)]
MARGIN = 0.1  # years: an effect inside +-MARGIN is one nobody would choose a network for


def cells() -> list[dict[str, bool]]:
    """The 16 on/off settings of the four ideas, the baseline (all off) first, FADE-Net last."""
    return [dict(zip(IDEAS, on)) for on in itertools.product((False, True), repeat=len(IDEAS))]


BASELINE, FADENET = cells()[0], cells()[-1]  # every idea off, every idea on


def cell_name(cell: dict[str, bool]) -> str:
    """A cell as a reader names it: "baseline", "FADE-Net", "FADE-Net without SPP", "baseline +
    coordinate attention + SPP"."""
    on = [IDEAS[i][1] for i in IDEAS if cell[i]]
    off = [IDEAS[i][1] for i in IDEAS if not cell[i]]
    if not off:
        return "FADE-Net"
    if len(off) == 1:
        return f"FADE-Net without {off[0]}"
    return " + ".join(["baseline", *on])


def term_name(term: str) -> str:
    """A term of the linear model in words: "SPP", "coordinate attention x SPP"."""
    return " x ".join(IDEAS[i][1] for i in term.split(":"))


def cell_config(cfg: Config, cell: dict[str, bool], seed: int) -> Config:
    """The profile's config with FADE-Net's ideas switched as in ``cell``, the seed, and the share
    of the training split ``eval.ablation_budget`` (1 in the reference profile: the whole split);
    a copy, ``cfg`` is left as it was."""
    return cfg.replaced({"model.arch": "fadenet", **{IDEAS[i][0]: on for i, on in cell.items()},
                         "train.seed": seed, "train.fraction": cfg.eval.ablation_budget})


def run_factorial(cfg: Config, faces: FaceSet, split: Split, progress: bool = True) -> pd.DataFrame:
    """Every cell x seed of ``eval.factorial_seeds``, read from the store or trained; one row per
    run (the four switches, the cell's name, seed, scores, compute, minutes and run id). Seed by
    seed, so that an interrupted study already holds whole replicates."""
    jobs = [(cell, seed) for seed in cfg.eval.factorial_seeds for cell in cells()]
    rows = []
    for cell, seed in tqdm(jobs, desc="factorial runs", unit="run", disable=not progress):
        labels = {**cell, "network": cell_name(cell)}
        rows.append(stored_or_trained(cell_config(cfg, cell, seed), faces, split, store_path(cfg), labels, progress))
    return pd.DataFrame(rows)


def stored_runs(cfg: Config) -> pd.DataFrame:
    """The factorial's runs already in the store, without training any (chapter 07 reads them):
    one row per finished run, as :func:`run_factorial` gives them."""
    rows = [stored_row(cell_config(cfg, cell, seed), store_path(cfg), {**cell, "network": cell_name(cell)})
            for seed in cfg.eval.factorial_seeds for cell in cells()]
    return pd.DataFrame([r for r in rows if r is not None])


def budget_caption(cfg: Config, faces: FaceSet, split: Split) -> str:
    """What each of the factorial's runs learns from, in words."""
    trained_on = len(training_rows(faces, split, cfg.eval.ablation_budget, cfg.data.seed))
    return budget_text(cfg, trained_on, len(split.train))


def store_path(cfg: Config) -> Path:
    """Where finished runs leave their rows and per-face test predictions (committed with the figures)."""
    return cfg.figures_path / "predictions"


def stored_or_trained(cfg: Config, faces: FaceSet, split: Split, store: Path, labels: dict,
                      progress: bool = True) -> dict:
    """The row of the run ``cfg`` describes (``labels``, then its seed, scores, compute and id):
    from ``store`` when a finished run left it there, else trained (or resumed) and then stored
    with its per-face test predictions."""
    stored = stored_row(cfg, store, labels)
    if stored is not None:
        return stored
    run_id = resolve(cfg).run_folder.name
    row_path = store / f"{run_id}.json"
    run = train(cfg, faces, split, progress=progress)
    faces_path = run.folder / "test_predictions.csv"
    table = pd.read_csv(faces_path)
    if "std" not in table:
        raise RuntimeError(f"{faces_path} predates per-face standard deviations: delete {run.folder} and run again")
    store.mkdir(parents=True, exist_ok=True)
    with atomic_path(store / f"{run_id}.csv.gz") as tmp:
        table.rename(columns={"age": "true_age", "predicted": "predicted_age"})[
            ["face", "true_age", "predicted_age", "std"]].to_csv(tmp, index=False, float_format="%.4f",
                                                                 compression="gzip")
    m = run.meta
    row = {**labels, "seed": cfg.train.seed, "val_mae": m["best_val_mae"], "test_mae": m["test_mae"],
           "epoch_equivalents": round(m["epoch_equivalents"], 3), "minutes": round(m["train_seconds"] / 60, 2),
           "run": run_id}
    atomic_write_text(row_path, json.dumps(row, indent=1) + "\n")
    return row


def run_transfer(cfg: Config, faces: FaceSet, split: Split, progress: bool = True) -> pd.DataFrame:
    """The baseline and FADE-Net with each seed of ``eval.transfer_seeds``, trained for each
    multiple of the profile's budget in ``eval.transfer_scales`` (``train.epochs`` times it, the
    schedule stretched with it); one row per run. At scale 1 a run is the factorial's cell, read
    from the store rather than trained again."""
    jobs = [(scale, seed, cell) for scale in cfg.eval.transfer_scales for seed in cfg.eval.transfer_seeds
            for cell in (BASELINE, FADENET)]
    rows = []
    for scale, seed, cell in tqdm(jobs, desc="budget transfer runs", unit="run", disable=not progress):
        run_cfg = cell_config(cfg, cell, seed).override({"train.epochs": cfg.train.epochs * scale})
        rows.append(stored_or_trained(run_cfg, faces, split, store_path(cfg), {"network": cell_name(cell),
                                      "scale": scale}, progress))
    return pd.DataFrame(rows)


def transfer_table(runs: pd.DataFrame, level: float = 0.95, margin: float = MARGIN) -> pd.DataFrame:
    """Per budget: both networks' mean test MAE, the seed-paired difference FADE-Net minus
    baseline with its t-interval over the seeds, Holm-adjusted across the budgets, the
    equivalence test against +-``margin`` and the verdict."""
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.weightstats import ttost_paired

    rows = []
    for scale, group in runs.groupby("scale", sort=True):
        by = group.pivot(index="seed", columns="network", values="test_mae").dropna()
        diffs = (by["FADE-Net"] - by["baseline"]).to_numpy(dtype=float)
        if len(diffs) < 2:
            raise ValueError(f"the budget transfer needs at least 2 seeds with both networks (scale {scale}: {len(diffs)})")
        test = stats.ttest_1samp(diffs, 0.0)
        ci = test.confidence_interval(level)
        rows.append({"epoch_equivalents": group["epoch_equivalents"].mean(), "seeds": len(diffs),
                     "baseline_test_mae": by["baseline"].mean(), "fadenet_test_mae": by["FADE-Net"].mean(),
                     "effect": diffs.mean(), "ci_low": ci.low, "ci_high": ci.high, "p": test.pvalue,
                     "p_tost": ttost_paired(by["FADE-Net"].to_numpy(), by["baseline"].to_numpy(), -margin, margin)[0]})
    table = pd.DataFrame(rows)
    table["p_holm"] = multipletests(table["p"], alpha=1 - level, method="holm")[1]
    table["verdict"] = [verdict(r, level, margin) for r in table.to_dict("records")]
    return table.rename(columns={"effect": "fadenet_minus_baseline"})


def stored_row(cfg: Config, store: Path, labels: dict) -> dict | None:
    """The row a finished run of ``cfg`` left in ``store`` with its predictions, ``labels`` on top;
    None when it has not finished."""
    run_id = resolve(cfg).run_folder.name
    if not ((store / f"{run_id}.json").is_file() and (store / f"{run_id}.csv.gz").is_file()):
        return None
    return {**json.loads((store / f"{run_id}.json").read_text()), **labels}


def face_errors(runs: pd.DataFrame, store: Path) -> np.ndarray:
    """Absolute test errors, one row per run (in ``runs``' order), one column per test face (in
    the first run's order); every run must have scored the same faces."""
    tables = [pd.read_csv(store / f"{r}.csv.gz").set_index("face") for r in runs["run"]]
    order = tables[0].index
    if any(len(t) != len(order) or not t.index.isin(order).all() for t in tables):
        raise ValueError("the factorial's runs were scored on different test faces")
    return np.stack([(t.loc[order, "predicted_age"] - t.loc[order, "true_age"]).abs().to_numpy() for t in tables])


def coded(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with each idea coded -1/2 (off) or +1/2 (on) and the seed as a category."""
    out = pd.DataFrame({i: np.where(runs[i].astype(bool), 0.5, -0.5) for i in IDEAS})
    out["seed"] = runs["seed"].astype(str).to_numpy()
    out["test_mae"] = runs["test_mae"].to_numpy(dtype=float)
    return out


def contrasts(on: np.ndarray) -> np.ndarray:
    """The (terms x runs) matrix that turns run MAEs into each term's effect in a balanced design:
    a main effect is mean(with) - mean(without); an interaction a:b is a's effect with b on minus
    a's effect with b off. ``on``: (runs x ideas) of 0/1."""
    x = np.where(on, 0.5, -0.5)
    columns = [x[:, k] for k in range(x.shape[1])]
    columns += [x[:, a] * x[:, b] for a, b in itertools.combinations(range(x.shape[1]), 2)]
    c = np.stack(columns)                      # each row sums to zero over a balanced design
    return c / (c**2).sum(axis=1, keepdims=True)  # the least-squares coefficient of that column


def effects(runs: pd.DataFrame, errors: np.ndarray | None = None, level: float = 0.95, margin: float = MARGIN,
            resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each main effect and two-way interaction on test MAE (years; negative lowers the error):
    the OLS estimate with its ``level`` interval and Holm-adjusted p-value, the equivalence test
    (TOST) against +-``margin``, the hierarchical bootstrap interval (when ``errors``, the runs'
    per-face absolute errors, are given) and the verdict those support (:func:`verdict`)."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.multitest import multipletests

    check_complete(runs)
    data = coded(runs)
    blocks = " + C(seed)" if data["seed"].nunique() > 1 else ""
    fit = smf.ols(f"test_mae ~ ({' + '.join(IDEAS)})**2{blocks}", data=data).fit()
    ci = fit.conf_int(alpha=1 - level)
    est, se, df = fit.params[TERMS], fit.bse[TERMS], fit.df_resid
    p_holm = multipletests(fit.pvalues[TERMS].to_numpy(), alpha=1 - level, method="holm")[1]
    tost = np.maximum(stats.t.sf((est + margin) / se, df), stats.t.cdf((est - margin) / se, df))
    table = pd.DataFrame({"term": TERMS, "what": [term_name(t) for t in TERMS], "effect": est.to_numpy(),
                          "ci_low": ci.loc[TERMS, 0].to_numpy(), "ci_high": ci.loc[TERMS, 1].to_numpy(),
                          "p_holm": p_holm, "p_tost": np.asarray(tost)})
    if errors is not None:
        boot = hierarchical_bootstrap(runs, errors, level, resamples, seed)
        table["boot_low"], table["boot_high"] = boot[:, 0], boot[:, 1]
    table["verdict"] = [verdict(r, level, margin) for r in table.to_dict("records")]
    return table


def check_complete(runs: pd.DataFrame) -> None:
    """Every cell with every seed, once: the contrasts and the model assume a balanced design."""
    counts = runs.groupby([*IDEAS, "seed"]).size()
    seeds = runs["seed"].nunique()
    if len(counts) != len(cells()) * seeds or (counts != 1).any():
        raise ValueError(f"the factorial is incomplete: {len(runs)} runs for {len(cells())} cells x {seeds} seeds")


def hierarchical_bootstrap(runs: pd.DataFrame, errors: np.ndarray, level: float = 0.95, resamples: int = 2000,
                           seed: int = 0) -> np.ndarray:
    """Percentile intervals (terms x [low, high]) of the terms' effects when both levels of
    chance are redrawn: the test faces (one draw shared by every run, as they all saw the same
    faces) and, within each cell, which of its seeds' runs are kept."""
    rng = np.random.default_rng(seed)
    on = runs[list(IDEAS)].to_numpy(dtype=bool)
    keys = [tuple(r) for r in on]
    members = {k: np.flatnonzero([key == k for key in keys]) for k in dict.fromkeys(keys)}
    cell_on = np.array([k for k in members], dtype=bool)
    c = contrasts(cell_on)
    n_faces = errors.shape[1]
    out = np.empty((resamples, len(TERMS)))
    for b in range(resamples):
        faces = rng.integers(0, n_faces, n_faces)
        run_mae = errors[:, faces].mean(axis=1)
        cell_mae = np.array([run_mae[rng.choice(idx, len(idx))].mean() for idx in members.values()])
        out[b] = c @ cell_mae
    tail = (1 - level) / 2 * 100
    return np.percentile(out, [tail, 100 - tail], axis=0).T


def verdict(row: dict, level: float = 0.95, margin: float = MARGIN) -> str:
    """What the intervals support: "lowers MAE by x" or "raises MAE by x" when the Holm-adjusted
    test rejects no effect ("less than <margin>" added when the equivalence test also holds),
    "equivalent to no effect within <margin>" when the equivalence test
    rejects an effect beyond the margin, "undecided" otherwise."""
    alpha = 1 - level
    x, interval = row["effect"], f"{level:.0%} CI {row['ci_low']:+.2f} to {row['ci_high']:+.2f}"
    if row["p_holm"] < alpha:
        small = f", less than {margin:g}" if row["p_tost"] < alpha else ""
        return f"{'lowers' if x < 0 else 'raises'} MAE by {abs(x):.2f} years{small} ({interval})"
    if row["p_tost"] < alpha:
        return f"equivalent to no effect within {margin:g} years ({x:+.2f}, {interval})"
    return f"undecided ({x:+.2f} years, {interval})"


def one_at_a_time(runs: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows (baseline, baseline + one idea, FADE-Net, FADE-Net without one idea) read
    off the factorial's cells (those ``runs`` hold), with their switches: mean and spread of test
    MAE over the seeds."""
    if runs.empty:
        return pd.DataFrame()
    rows = []
    for cell in cells():
        if sum(cell.values()) in (0, 1, 3, 4):
            mask = np.logical_and.reduce([runs[i].astype(bool) == on for i, on in cell.items()])
            mae = runs.loc[mask, "test_mae"]
            if mae.empty:
                continue
            rows.append({"network": cell_name(cell), "ideas on": sum(cell.values()), **cell, "seeds": len(mae),
                         "test MAE mean": mae.mean(), "test MAE std": mae.std(ddof=1) if len(mae) > 1 else np.nan,
                         "val MAE mean": runs.loc[mask, "val_mae"].mean()})
    return pd.DataFrame(rows).sort_values(["ideas on", "network"], kind="stable", ignore_index=True)


def with_costs(rows: pd.DataFrame, cfg: Config, size: int = 224) -> pd.DataFrame:
    """``rows`` (named cells) with each network's parameters and multiply-adds at ``size`` px, on
    the backbone the factorial trains (random weights: sizes do not depend on them)."""
    from ..model import count_macs, count_parameters

    by_name = {cell_name(c): c for c in cells()}
    networks = [resolve(cell_config(cfg, by_name[name], 0)).network(weights=False) for name in rows["network"]]
    out = rows.copy()
    out.insert(2, "parameters", [count_parameters(n) for n in networks])
    out.insert(3, f"M multiply-adds @{size}px", [round(count_macs(n, size) / 1e6, 1) for n in networks])
    return out


def verdict_kind(text: str) -> str:
    """The first word of a verdict: lowers, raises, equivalent or undecided."""
    return text.split(" ", 1)[0]


def chapter_summary(effects: pd.DataFrame, rows: pd.DataFrame, transfer: pd.DataFrame | None = None,
                    target: float = 0.08) -> str:
    """What chapter 04 found, in sentences computed from its tables: FADE-Net against the
    baseline, each idea's verdict, the precision reached, the interactions, the budget transfer."""
    by = rows.set_index("network")
    seeds = int(by.loc["FADE-Net", "seeds"])
    lines = [f"- FADE-Net scores test MAE {by.loc['FADE-Net', 'test MAE mean']:.2f} and the baseline "
             f"{by.loc['baseline', 'test MAE mean']:.2f} (mean of {seeds} seed{'s' * (seeds > 1)} each)."]
    main = effects[effects["term"].isin(IDEAS)]
    lines += [f"- {r['what'][0].upper() + r['what'][1:]}: {r['verdict']}." for r in main.to_dict("records")]
    half = ((main["ci_high"] - main["ci_low"]) / 2).max()
    lines.append(f"- The widest main-effect interval has a half-width of {half:.3f} years "
                 f"({'within' if half <= target else 'above'} the {target:g}-year precision this study aimed for).")
    pairs = effects[~effects["term"].isin(IDEAS)]
    found = pairs[pairs["verdict"].map(verdict_kind).isin(["lowers", "raises"])]
    lines.append("- No two-way interaction is detected." if found.empty else
                 "- Interactions detected: " + "; ".join(f"{r['what']} {r['verdict']}" for r in found.to_dict("records")) + ".")
    if transfer is not None:
        kinds = transfer["verdict"].map(verdict_kind)
        steps = "; ".join(f"at {r['epoch_equivalents']:.3g} epoch-equivalents, {r['verdict']}"
                          for r in transfer.to_dict("records"))
        same = "the verdict is the same at every budget" if kinds.nunique() == 1 else "the verdict changes with the budget"
        lines.append(f"- FADE-Net minus the baseline: {steps}; {same}.")
    return "\n".join(lines)
