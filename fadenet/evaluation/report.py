"""Tables and figures of the ablation (notebook 04) and evaluation (notebook 05) chapters."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..config import Config
from ..data.sources import SOURCE_NAMES
from .metrics import LIFE_STAGES, cumulative_scores, mae_per_group

# The FADE-Net README's AFAD table (reported there, not measured here): method, backbone, MAE,
# parameters, where it is reported, the split, whether the split keeps each person's images in
# one part (AFAD names no subjects, so an image split cannot).
_README = "as listed in the FADE-Net README (each paper's own split)"
LITERATURE = [
    ("FADE-Net, ensemble of seeds 42 + 1337, multi-scale TTA", "MobileNetV3-Large", 3.02, "4.84M", "FADE-Net README",
     "stratified 80-10-10", "no"),
    ("FADE-Net, seed 1337", "MobileNetV3-Large", 3.057, "4.84M", "FADE-Net README", "stratified 80-10-10", "no"),
    ("FADE-Net, seed 42", "MobileNetV3-Large", 3.095, "4.84M", "FADE-Net README", "stratified 80-10-10", "no"),
    ("GRANET", "ResNet-50", 3.10, "~25.5M", "Garain et al., IEEE Access 2021, via FADE-Net README", _README, "not stated"),
    ("CDCNN", "multi-task CNN", 3.11, "-", "Zhang et al., CVPR 2018, via FADE-Net README", _README, "not stated"),
    ("OR-CNN", "VGG-16", 3.34, "138M", "Niu et al., CVPR 2016, via FADE-Net README", _README, "not stated"),
    ("RAN", "ResNet-34", 3.42, "~21.8M", "Wang et al., CVPR 2017, via FADE-Net README", _README, "not stated"),
    ("CORAL", "ResNet-34", 3.48, "~21.8M", "Cao et al., PRL 2020, via FADE-Net README", _README, "not stated"),
    ("DEX", "VGG-16", 3.80, "138M", "Rothe et al., ICCVW 2015, via FADE-Net README", _README, "not stated"),
    ("ResNet-50 / FaRL (unified benchmark)", "ResNet-50, ViT-B", "3.12-3.20", "~25M / ~86M",
     "Paplham et al., CVPR 2024", "5 subject-aware splits", "yes"),
]


def cells_figure(rows: pd.DataFrame, runs: pd.DataFrame, caption_budget: str) -> plt.Figure:
    """The paper's one-at-a-time rows read off the factorial: each seed's test MAE (dots) and
    their mean (bar), the baseline at the top and FADE-Net at the bottom."""
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(rows) + 1.6))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, rows["test MAE mean"], color="tab:blue", alpha=0.35, label="mean over seeds")
    for yi, name in zip(y, rows["network"]):
        seeds = runs.loc[runs["network"] == name, "test_mae"]
        ax.plot(seeds, np.full(len(seeds), yi), "o", color="tab:blue", ms=4,
                label="one training (seed)" if yi == y[0] else None)
    for yi, value in zip(y, rows["test MAE mean"]):
        ax.text(value, yi + 0.3, f"{value:.2f}", va="center", ha="center", fontsize=7)
    low = min(rows["test MAE mean"].min(), runs["test_mae"].min())
    high = max(rows["test MAE mean"].max(), runs["test_mae"].max())
    ax.set_xlim(low - 0.15, high + 0.15)
    ax.set_yticks(y, rows["network"])
    ax.set(xlabel="test MAE (years)", title=f"The paper's ablation rows, read off the factorial\n{caption_budget}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def factorial_effects_figure(effects: pd.DataFrame, margin: float, caption_budget: str) -> plt.Figure:
    """Each main effect and two-way interaction on test MAE with both 95% intervals: the linear
    model's (over runs) and the hierarchical bootstrap's (over runs and test faces); the grey
    band is the equivalence margin. Left of zero the idea lowers the error."""
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(effects) + 2.4))
    y = np.arange(len(effects))[::-1].astype(float)
    x = effects["effect"].to_numpy()
    ax.axvspan(-margin, margin, color="0.9", label=f"within {margin:g} years of no effect")
    ax.axvline(0, color="0.3", lw=1)
    ax.errorbar(x, y + 0.12, xerr=[x - effects["ci_low"], effects["ci_high"] - x], fmt="o", color="tab:blue",
                capsize=3, label="95% CI, linear model over runs")
    if "boot_low" in effects:
        ax.errorbar(x, y - 0.12, xerr=[x - effects["boot_low"], effects["boot_high"] - x], fmt="s", ms=3,
                    color="tab:orange", capsize=3, label="95% CI, bootstrap over runs and test faces")
    ax.set_yticks(y, effects["what"])
    ax.set(xlabel="effect on test MAE (years): with the idea minus without it",
           title=f"What each idea does, averaged over the other three\n{caption_budget}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7)
    fig.tight_layout()
    return fig


def transfer_figure(runs: pd.DataFrame, table: pd.DataFrame, margin: float) -> plt.Figure:
    """Left: test MAE of the baseline and FADE-Net against training compute, each seed a dot.
    Right: the difference FADE-Net minus baseline with its 95% interval at each budget."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, group), colour in zip(runs.groupby("network", sort=False), ("tab:gray", "tab:blue")):
        left.plot(group["epoch_equivalents"], group["test_mae"], "o", color=colour, alpha=0.6, ms=4)
        mean = group.groupby("epoch_equivalents")["test_mae"].mean()
        left.plot(mean.index, mean.values, "-", color=colour, label=f"{name} (line: mean over seeds)")
    left.set(xlabel="training compute (epoch-equivalents)", ylabel="test MAE (years)",
             title="Longer training, both networks")
    left.legend(fontsize=8)
    x = table["epoch_equivalents"].to_numpy()
    d = table["fadenet_minus_baseline"].to_numpy()
    right.axhspan(-margin, margin, color="0.9", label=f"within {margin:g} years of no effect")
    right.axhline(0, color="0.3", lw=1)
    right.errorbar(x, d, yerr=[d - table["ci_low"], table["ci_high"] - d], fmt="o", color="tab:blue", capsize=4,
                   label="95% CI over seeds")
    right.set(xlabel="training compute (epoch-equivalents)", ylabel="FADE-Net minus baseline (years)",
              title="Does the verdict change with the budget?", xticks=x)
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def seed_table(results: dict[tuple[str, str], float]) -> pd.DataFrame:
    """Rows = models (each seed, then the ensemble), columns = TTA modes, cells = test MAE."""
    models = list(dict.fromkeys(model for model, _ in results))
    modes = list(dict.fromkeys(mode for _, mode in results))
    table = pd.DataFrame([[results[(m, t)] for t in modes] for m in models], index=models,
                         columns=[f"test MAE, TTA {t}" for t in modes])
    table.index.name = "model"
    return table.reset_index()


def cs_figure(tables: dict[str, pd.DataFrame]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, table in tables.items():
        cs = cumulative_scores(table)
        ax.plot(cs.index, cs.values, "o-", ms=3, label=label)
    ax.set(xlabel="error tolerance k (years)", ylabel="CS@k: share of faces within k years",
           title="Cumulative score", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def error_figures(table: pd.DataFrame, label: str) -> plt.Figure:
    """Predicted against true age, the error histogram and the MAE per age group of one model."""
    fig, (scatter, hist, groups) = plt.subplots(1, 3, figsize=(15, 4.2))
    scatter.scatter(table["true_age"], table["predicted_age"], s=5, alpha=0.35)
    top = max(table["true_age"].max(), table["predicted_age"].max()) + 2
    scatter.plot([0, top], [0, top], color="tab:red", lw=1, label="prediction = truth")
    scatter.set(xlabel="true age", ylabel="predicted age (expectation)", title=f"Predicted vs true: {label}",
                xlim=(0, top), ylim=(0, top))
    scatter.legend(fontsize=8)
    hist.hist(table["error"], bins=np.arange(-30, 31, 1), color="tab:blue", alpha=0.8)
    hist.axvline(0, color="0.3", lw=0.8)
    hist.set(xlabel="predicted - true age (years)", ylabel="faces",
             title=f"Errors: mean {table['error'].mean():+.2f}, MAE {table['abs_error'].mean():.2f}")
    per_group = mae_per_group(table)
    groups.bar(per_group["age_group"], per_group["MAE"], color="tab:orange")
    for x, (mae, n) in enumerate(zip(per_group["MAE"], per_group["faces"])):
        groups.text(x, mae + 0.1, f"{mae:.1f}\n({n})", ha="center", fontsize=7)
    # headroom for the two-line labels above the tallest bar, which would otherwise cross the title
    groups.set(xlabel="age group (faces)", ylabel="MAE (years)", title="MAE per age group",
               ylim=(0, 1.2 * per_group["MAE"].max() + 0.5))
    fig.tight_layout()
    return fig


def literature_table(measured: list[dict]) -> pd.DataFrame:
    """The README's AFAD numbers in a "reported" column and this workbook's in a "measured here"
    column, each row naming its dataset, split, whether that split is subject-exclusive and its
    source, so that no number is read as the other kind."""
    rows = [{"method": m, "backbone": b, "dataset": "AFAD", "split": split, "subject-exclusive": exclusive,
             "reported MAE": mae, "measured here": "", "parameters": p, "source": s}
            for m, b, mae, p, s, split, exclusive in LITERATURE]
    rows += [{"method": r["method"], "backbone": r["backbone"], "dataset": r["dataset"], "split": r["protocol"],
              "subject-exclusive": r["subject-exclusive"], "reported MAE": "", "measured here": r["MAE"],
              "parameters": r["parameters"], "source": r["source"]} for r in measured]
    return pd.DataFrame(rows)


def budget_text(cfg: Config, trained_on: int, split_train: int) -> str:
    return (f"each run learns from {trained_on:,} of the "
            f"{split_train:,} training faces, {cfg.train.epochs} epoch{'s' * (cfg.train.epochs != 1)}, {cfg.data.size}px")


def dataset_name(source: str) -> str:
    return SOURCE_NAMES.get(source, source)


def tta_findings(seeds: pd.DataFrame) -> list[str]:
    """How each TTA mode changed each model's test MAE, flagging any that made it worse."""
    lines = []
    for _, row in seeds.iterrows():
        base = row["test MAE, TTA none"]
        for column in [c for c in seeds.columns if c.startswith("test MAE, TTA") and not c.endswith("none")]:
            delta = row[column] - base
            mode = column.rsplit(" ", 1)[1]
            effect = ("leaves the test MAE unchanged" if abs(delta) < 5e-4 else
                      f"{'improves' if delta < 0 else 'WORSENS'} the test MAE by {abs(delta):.3f}")
            lines.append(f"{row['model']}: TTA {mode} {effect} ({base:.3f} -> {row[column]:.3f})")
    return lines


def measured_rows(cfg: Config, source: str, variant: str, backbone: str, seeds: pd.DataFrame,
                  protocols: pd.DataFrame | None, parameters: int, subjects: bool, full: dict | None = None,
                  kfold_variant: str | None = None) -> list[dict]:
    """This workbook's numbers for the literature table, each naming data, split and profile.
    ``protocols`` (of ``kfold_variant``, default ``variant``) adds the kfold mean, if given.
    ``subjects``: whether the dataset names subjects (then every split keeps a person's images in
    one part). ``full`` adds chapter 03's model: a dict with its ``method`` label, ``backbone``,
    ``parameters``, its test MAE per TTA mode (``tta``) and ``same_as_first_seed`` (True when it
    is the first seed's run itself, whose no-TTA row is then not listed twice)."""
    share = f"{cfg.eval.ablation_budget:.0%} of the training split per run"
    where = f"measured here: profile {cfg.profile}, {share}, notebook 05"
    exclusive = "yes" if subjects else f"no: {dataset_name(source)} names no subjects"
    by_model = seeds.set_index("model")
    single = by_model.index[0]
    rows = [{"method": f"{variant} (this workbook), ensemble of {len(by_model) - 1} seeds, TTA multi",
             "MAE": round(by_model.loc["ensemble", "test MAE, TTA multi"], 3)} if "ensemble" in by_model.index else None,
            None if full and full.get("same_as_first_seed") else
            {"method": f"{variant} (this workbook), {single}, no TTA",
             "MAE": round(by_model.loc[single, "test MAE, TTA none"], 3)}]
    rows = [dict(r, protocol=f"stratified {cfg.data.split}") for r in rows if r]
    if protocols is not None:
        kfold = protocols[(protocols["protocol"] == "kfold") & (protocols["rotation"] == "mean ± std")]
        rows.append({"method": f"{kfold_variant or variant} (this workbook), seed 42, no TTA", "MAE": kfold["test MAE"].iloc[0],
                     "protocol": "5 kfold rotations (mean ± std)"})
    rows = [dict(r, backbone=backbone, parameters=f"{parameters / 1e6:.2f}M", source=where) for r in rows]
    if full:
        chapter03 = f"measured here: profile {cfg.profile}, whole training split, notebooks 03 and 05"
        rows = [{"method": f"{full['method']}, TTA {mode}", "MAE": round(mae, 3), "protocol": f"stratified {cfg.data.split}",
                 "backbone": full["backbone"], "parameters": f"{full['parameters'] / 1e6:.2f}M", "source": chapter03}
                for mode, mae in full["tta"].items()] + rows
    return [dict(r, dataset=dataset_name(source), **{"subject-exclusive": exclusive}) for r in rows]


def group_findings(per_group: pd.DataFrame, bias: float = 1.0) -> list[str]:
    """Where the errors are, in sentences computed from :func:`mae_per_group`: the easiest and
    hardest age group, and the groups predicted too old or too young by more than ``bias`` years."""
    g = per_group.set_index("age_group")
    low, high = g["MAE"].idxmin(), g["MAE"].idxmax()
    lines = [f"MAE is lowest at ages {low} ({g.loc[low, 'MAE']:.2f} years, {g.loc[low, 'faces']:,} faces) and "
             f"highest at ages {high} ({g.loc[high, 'MAE']:.2f}, {g.loc[high, 'faces']:,} faces)."]
    old = [f"{a} ({e:+.1f})" for a, e in g["mean error"].items() if e > bias]
    young = [f"{a} ({e:+.1f})" for a, e in g["mean error"].items() if e < -bias]
    if old:
        lines.append(f"Predicted too old by more than {bias:g} year on average: ages {', '.join(old)}.")
    if young:
        lines.append(f"Predicted too young by more than {bias:g} year on average: ages {', '.join(young)}.")
    if g["mean error"].iloc[0] > bias and g["mean error"].iloc[-1] < -bias:
        lines.append("The youngest are aged up and the oldest aged down: predictions are pulled toward the "
                     "middle of the age range.")
    return lines


def protocol_findings(protocols: pd.DataFrame) -> list[str]:
    """The split protocols compared at equal training faces, from ``ablation.protocol_runs``."""
    rotations = protocols[(protocols["protocol"] == "kfold") & (protocols["rotation"] != "mean ± std")]
    kfold = rotations["test MAE"].astype(float)
    whole, matched = protocols.iloc[0], protocols.iloc[1]
    gap = kfold.mean() - float(matched["test MAE"])
    within = "within" if abs(gap) <= 2 * kfold.std(ddof=1) else "beyond"
    return [f"At equal training faces the {whole['protocol']} split scores {float(matched['test MAE']):.3f} "
            f"({matched['train / val / test faces']} train / val / test faces) and the five kfold rotations "
            f"{kfold.mean():.3f} ± {kfold.std(ddof=1):.3f}: a gap of {gap:+.3f} years, {within} two standard "
            f"deviations of the rotations.",
            f"With its whole training part ({whole['train / val / test faces']}) the {whole['protocol']} split "
            f"scores {float(whole['test MAE']):.3f}; that row has more training faces than a kfold rotation and is "
            f"not comparable with it."]


def fairness_figure(table, title: str = "") -> plt.Figure:
    """MAE and bias per life stage, one line per gender, with 95% intervals, from
    :func:`.metrics.fairness_table`."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for offset, (gender, part) in zip((-0.08, 0.08), table[table["ages"] != "all"].groupby("gender")):
        x = np.array([LIFE_STAGES.index(a) for a in part["ages"]]) + offset
        for ax, name in zip(axes, ("MAE", "bias")):
            ax.errorbar(x, part[name], yerr=[part[name] - part[f"{name} low"], part[f"{name} high"] - part[name]],
                        fmt="o-", capsize=3, label=f"{gender}")
            ax.set_xticks(np.arange(len(LIFE_STAGES)), LIFE_STAGES)
    axes[0].set_ylabel("mean absolute error (years)")
    axes[1].set_ylabel("bias (years; above 0: called older)")
    axes[1].axhline(0, color="0.5", lw=1)
    for ax in axes:
        ax.set_xlabel("true age")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def fairness_findings(fair: pd.DataFrame) -> str:
    """Each gender's MAE and bias over all ages, and the cells (gender x life stage) where the
    model errs most and least, from :func:`.metrics.fairness_table`."""
    cells = fair[fair["ages"] != "all"]
    hi, lo = cells.loc[cells["MAE"].idxmax()], cells.loc[cells["MAE"].idxmin()]
    overall = fair[fair["ages"] == "all"].set_index("gender")
    people = ", ".join(f"{g} MAE {r['MAE']:.2f} ({r['MAE low']:.2f} to {r['MAE high']:.2f}), bias {r['bias']:+.2f}"
                       for g, r in overall.iterrows())
    return (f"By person, the model `predict` uses: {people}"
            + f"; worst cell {hi['gender']} {hi['ages']} (MAE {hi['MAE']:.2f}, {hi['MAE low']:.2f} to "
              f"{hi['MAE high']:.2f}, {int(hi['faces'])} faces), {hi['MAE'] - lo['MAE']:.2f} years above the best, "
              f"{lo['gender']} {lo['ages']} ({lo['MAE']:.2f}).")


def chapter_summary(seeds: pd.DataFrame, per_group: pd.DataFrame, protocols: pd.DataFrame | None = None,
                    fair: pd.DataFrame | None = None) -> str:
    """What chapter 05 found, in sentences computed from its tables: the gain from TTA and from
    the seed ensemble, where the errors are, the protocols compared at equal training faces and
    whom the shipped model errs on."""
    by = seeds.set_index("model")
    singles = by.drop(index="ensemble", errors="ignore")
    lines = []
    for column in [c for c in by.columns if not c.endswith("none")]:
        gains = singles["test MAE, TTA none"] - singles[column]
        change = (f"lowers a single model's test MAE by {gains.min():.3f} to {gains.max():.3f} years"
                  if gains.min() > 0 else
                  f"changes a single model's test MAE by {-gains.max():+.3f} to {-gains.min():+.3f} years")
        lines.append(f"- TTA {column.rsplit(' ', 1)[1]} {change} ({len(singles)} model{'s' * (len(singles) > 1)}).")
    if "ensemble" in by.index:
        best = singles["test MAE, TTA none"].min()
        final = by.loc["ensemble", "test MAE, TTA multi"]
        lines.append(f"- The ensemble of {len(singles)} seeds with multi-scale TTA scores {final:.3f}, "
                     f"{abs(best - final):.3f} years {'better' if final <= best else 'worse'} than the best single "
                     f"model without TTA ({best:.3f}).")
    lines.append(f"- {group_findings(per_group)[0]}")
    if protocols is not None:
        lines.append(f"- {protocol_findings(protocols)[0]}")
    if fair is not None:
        lines.append(f"- {fairness_findings(fair)}")
    return "\n".join(lines)
