"""Tables and figures of the data chapter (notebook 01)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..config import Config
from .tensors import denormalize
from . import sources
from .cache import FaceSet
from .sources import SOURCE_NAMES
from .loader import Batches
from .splits import PARTS, RATIO_SPLITS, Split


def source_summary(cfg: Config, faces: FaceSet) -> pd.DataFrame:
    m = faces.meta
    picked = cfg.data.source if cfg.data.source != "auto" else f"auto -> {faces.source}"
    rows = [
        ("source", picked),
        ("dataset", SOURCE_NAMES.get(faces.source, faces.source)),
        ("folder", cfg.shown(m["source_folder"]) if m["source_folder"] else "(generated in memory)"),
        ("images used", f"{len(faces):,}"),
        ("files skipped", f"{len(faces.skipped):,}"),
        ("ages", f"{faces.ages.min()}-{faces.ages.max()} (median {np.median(faces.ages):.0f})"),
        ("crop", faces.crop), ("size", f"{faces.size} px"),
        ("cache", cfg.shown(faces.folder)),
        ("preprocessing", f"{m['seconds']:.1f} s, {m['images_per_second']:.0f} images/s"),
    ]
    return pd.DataFrame(rows, columns=["", "value"])


def sample_grid(faces: FaceSet, n: int = 24, columns: int = 8, seed: int = 0) -> plt.Figure:
    """Faces spread over the age range, youngest first, each titled with its age."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(faces)), faces.ages))
    picks = order[np.linspace(0, len(order) - 1, n).astype(int)]
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.45))
    for ax, i in zip(axes.flat, picks):
        ax.imshow(faces.images[i])
        ax.set_title(f"age {faces.ages[i]}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def split_table(faces: FaceSet, split: Split) -> pd.DataFrame:
    """Images per split part and per age group, with each part's share."""
    groups = sources.age_group(faces.ages)
    counts = pd.DataFrame({p: groups.iloc[split.part(p)].value_counts().reindex(sources.AGE_GROUPS, fill_value=0)
                           for p in PARTS})
    counts.loc["all ages"] = counts.sum()
    counts["total"] = counts.sum(axis=1)
    table = counts.reset_index().rename(columns={"index": "age group"})
    return table


def age_histograms(faces: FaceSet, split: Split) -> plt.Figure:
    """Age histogram of each part, as densities so parts of different size compare."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    bins = np.arange(sources.NUM_AGES + 1) - 0.5
    for part, color in zip(PARTS, ("tab:blue", "tab:orange", "tab:green")):
        ages = faces.ages[split.part(part)]
        ax.hist(ages, bins=bins, density=True, histtype="step", lw=1.5, color=color,
                label=f"{part} ({len(ages):,})")
    ax.set(xlabel="age", ylabel="share of images", title=f"Age distribution per part, {split.protocol} split")
    ax.legend()
    fig.tight_layout()
    return fig


def protocol_table() -> pd.DataFrame:
    """What each split protocol means (independent of the data)."""
    rows = [(name, f"{a}% / {b}% / {c}%", "stratified by age") for name, (a, b, c) in RATIO_SPLITS.items()]
    rows += [("official", "AAF train.txt (90%) / train.txt (10%) / val.txt", "AAF's own lists"),
             ("kfold", "6 / 2 / 2 of 10 folds, 5 rotations", "stratified by age, grouped by subject")]
    return pd.DataFrame(rows, columns=["protocol", "train / val / test", "how"])


def skipped_report(faces: FaceSet) -> pd.DataFrame:
    """Every file that was not used, with the reason, most common reasons first."""
    if faces.skipped.empty:
        return pd.DataFrame({"reason": ["(no file skipped)"], "files": [0], "example": [""]})
    grouped = faces.skipped.groupby("reason")["path"]
    return (pd.DataFrame({"files": grouped.size(), "example": grouped.first()})
            .sort_values("files", ascending=False).reset_index())


def augmented_examples(faces: FaceSet, split: Split, cfg: Config, n: int = 8) -> plt.Figure:
    """The same faces before and after one pass of the training augmentation."""
    rows = np.sort(split.train[:n])
    plain = next(iter(Batches(faces.images, faces.ages, rows, n)))[0]
    aug = Batches(faces.images, faces.ages, rows, n, train=True, seed=cfg.train.seed, erase_p=0.5)
    augmented = next(iter(aug))[0]
    fig, axes = plt.subplots(2, n, figsize=(n * 1.2, 2.7))
    for row, batch, label in ((0, plain, "cached"), (1, augmented, "augmented")):
        images = denormalize(batch).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        for ax, img in zip(axes[row], images):
            ax.imshow(img)
            ax.axis("off")
        axes[row, 0].set_title(label, fontsize=8, loc="left")
    fig.tight_layout()
    return fig



def chapter_summary(faces: FaceSet, split: Split, loader_rate: float) -> str:
    """Chapter 01's findings in sentences, every number from the chapter's own objects."""
    ages = faces.ages
    young, old = np.percentile(ages, [10, 90])
    share = float(((ages >= 15) & (ages <= 40)).mean())
    return "\n".join([
        f"Data: {len(faces):,} faces of {SOURCE_NAMES.get(faces.source, faces.source)} at {faces.size} px, "
        f"ages {int(ages.min())}-{int(ages.max())} (median {np.median(ages):.0f}; 80% between {young:.0f} and "
        f"{old:.0f}; {share:.0%} between 15 and 40); {len(faces.skipped):,} files skipped.",
        f"Split {split.protocol}: {len(split.train):,} training, {len(split.val):,} validation and "
        f"{len(split.test):,} test faces, stratified by age.",
        f"Input pipeline: {loader_rate:,.0f} augmented images/s, far above what training consumes on a CPU.",
    ])
