"""Plots of predicted age distributions (shared by the explorer and the figures of notebook 08)
and the inputs of the notebook's batch-prediction example."""
from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Sequence

import cv2
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..data import FaceSet

from .predictor import interval, moments


def distribution_axes(ax: Axes, probs: np.ndarray, true_age: float | None = None) -> None:
    """The predicted distribution as bars, its mean, its central 90% interval shaded and,
    where known, the true age."""
    mean, std = moments(probs)
    low, high = interval(probs, 0.9)
    ax.axvspan(low - 0.5, high + 0.5, color="0.88", label=f"90% interval {low}-{high}")
    ax.bar(np.arange(len(probs)), probs, width=1.0, color="tab:blue")
    ax.axvline(mean, color="tab:orange", lw=1.5, label=f"predicted {mean:.1f} (std {std:.1f})")
    if true_age is not None:
        ax.axvline(true_age, color="tab:green", lw=1.5, ls="--", label=f"true {true_age:.0f}")
    ax.set_xlim(-0.5, len(probs) - 0.5)
    ax.set_xlabel("age")
    ax.set_ylabel("probability")
    # headroom above the tallest bar and the side away from the mass keep the legend off the bars
    ax.set_ylim(0, 1.6 * float(np.max(probs)))
    ax.legend(fontsize=7, loc="upper left" if mean > len(probs) / 2 else "upper right", frameon=False)


def distribution_png(probs: np.ndarray, true_age: float | None = None) -> bytes:
    """:func:`distribution_axes` as PNG bytes (a standalone figure, never shown inline)."""
    fig = Figure(figsize=(4.2, 2.4), dpi=90)
    distribution_axes(fig.add_subplot(), probs, true_age)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def png(rgb: np.ndarray) -> bytes:
    """PNG bytes of a uint8 RGB image."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    assert ok, "PNG encoding of a uint8 image cannot fail"
    return data.tobytes()


def predictions_figure(images: np.ndarray, probs: np.ndarray, ages: Sequence[float], title: str = "") -> plt.Figure:
    """One row per face: the face, then its predicted distribution against its true age."""
    fig, axes = plt.subplots(len(images), 2, figsize=(7.5, 1.9 * len(images)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 3.2]})
    for (face_ax, dist_ax), image, p, age in zip(axes, images, probs, ages):
        face_ax.imshow(image)
        face_ax.axis("off")
        distribution_axes(dist_ax, p, age)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def scenes_figure(predictor, faces: FaceSet, rows: Sequence[int], seed: int = 1) -> plt.Figure:
    """Test faces pasted into larger pictures (turned, scaled, some with a second face), as
    ``bench faces`` makes them, with what the photo path finds and predicts drawn on them."""
    from .batch import annotate
    from .bench import decode, make_scenes
    scenes = make_scenes(faces, np.asarray(rows), seed=seed, progress=False)
    fig, axes = plt.subplots(1, len(scenes), figsize=(3.6 * len(scenes), 2.9), squeeze=False)
    for ax, scene in zip(axes[0], scenes):
        rgb = decode(scene)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        annotate(bgr, predictor.predict_image(rgb))
        ax.imshow(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        ax.set_title("true " + ", ".join(str(int(faces.ages[r])) for r in scene.rows), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def sample_folder(faces: FaceSet, rows: Sequence[int], folder: Path) -> Path:
    """A small folder of inputs to demonstrate batch prediction: the original picture of each of
    ``rows`` (its cached crop where the source has no files, as for synthetic data) and one
    file that is not an image. The folder is made anew on every call."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = faces.meta.get("source_folder")
    for row in rows:
        path = Path(faces.table["path"].iloc[row])
        if source:
            shutil.copyfile(Path(source) / path, folder / path.name)
        else:
            cv2.imwrite(str(folder / f"{path.stem}.png"), cv2.cvtColor(np.asarray(faces.images[row]), cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("a text file among the pictures\n")
    return folder


def robustness_figure(table, example: np.ndarray, corruptions, title: str = "") -> plt.Figure:
    """One face under each corruption (top) and the MAE change of each with its 95% interval
    (bottom), from :func:`fadenet.evaluation.robustness.corruption_table`."""
    from ..evaluation.robustness import corrupt
    fig = plt.figure(figsize=(12, 7.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.5])
    axes = top.subplots(2, (len(corruptions) + 2) // 2)
    for ax, c in zip(axes.flat, [None, *corruptions]):
        ax.imshow(example if c is None else corrupt(example, c))
        ax.set_title("clean" if c is None else f"{c.name}\n{c.strength}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    ax = bottom.subplots()
    rows = table[table["corruption"] != "none"].iloc[::-1]
    labels = [f"{r.corruption}, {r.strength}" for r in rows.itertuples()]
    y = np.arange(len(rows))
    ax.errorbar(rows["MAE change"], y, xerr=[rows["MAE change"] - rows["95% low"], rows["95% high"] - rows["MAE change"]],
                fmt="o", color="tab:red", capsize=3)
    ax.axvline(0, color="0.5", lw=1)
    ax.set_yticks(y, labels, fontsize=8)
    clean = table.loc[table["corruption"] == "none", "MAE"].iloc[0]
    ax.set_xlabel(f"MAE change against the clean faces (years; clean MAE {clean:.2f}), 95% interval over the faces")
    top.suptitle(title)
    return fig


METHOD_NAMES = {"temperature": "temperature-scaled distribution", "conformal": "split-conformal"}


def coverage_figure(by_group, title: str = "") -> plt.Figure:
    """Test coverage of the 50% and 90% intervals of both methods per group (all faces, life
    stages, genders) with 95% intervals, the target as a line, from
    :func:`fadenet.evaluation.calibration.coverage_by_group`."""
    test = by_group[by_group["split"] == "test"]
    groups = list(dict.fromkeys(test["group"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained", sharey=False)
    for ax, mass in zip(axes, (0.5, 0.9)):
        col = f"{mass:.0%}"
        for offset, (method, part) in zip((-0.1, 0.1), test.groupby("method", sort=False)):
            x = np.array([groups.index(g) for g in part["group"]]) + offset
            ax.errorbar(x, part[col], yerr=[part[col] - part[f"{col} low"], part[f"{col} high"] - part[col]],
                        fmt="o", capsize=3, label=METHOD_NAMES.get(method, method))
        ax.axhline(mass, color="0.5", lw=1, ls="--")
        ax.set_xticks(np.arange(len(groups)), groups, rotation=30)
        ax.set_ylabel(f"share of true ages inside the {col} interval")
        ax.set_title(f"{col} intervals (target {mass:.0%}, dashed)", fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def coverage_misses(by_group) -> str:
    """Where the reported method's test coverage misses its target: the groups whose 95%
    interval excludes the mass, in one sentence."""
    test = by_group[by_group["split"] == "test"]
    parts = []
    for method, part in test.groupby("method", sort=False):
        misses = [f"{r['group']} {r[f'{m:.0%}']:.0%} for {m:.0%}" for _, r in part.iterrows() for m in (0.5, 0.9)
                  if not r[f"{m:.0%} low"] <= m <= r[f"{m:.0%} high"]]
        parts.append(f"{METHOD_NAMES.get(method, method)}: " + ("; ".join(misses) if misses else "no group misses"))
    return "Coverage misses on test (95% interval excludes the target): " + ". ".join(parts) + "."


def chapter_summary(calibration, photo, corrupted, worst_photos) -> str:
    """Chapter 08's findings in sentences, every number from the chapter's own tables."""
    lines = [f"Calibration: {calibration.describe()}.", coverage_misses(calibration.by_group)]
    if photo is not None:
        files = photo[(photo["detector"] == "mtcnn") & (photo["input"] == "test files") & (photo["network in"] == "PyTorch")]
        scenes = photo[(photo["detector"] == "mtcnn") & (photo["input"] != "test files") & (photo["network in"] == "PyTorch")]
        if len(files) and len(scenes):
            f, sc = files.iloc[0], scenes.iloc[0]
            lines.append(f"Photo path (MTCNN): {f['found %']:.1f}% of the test files' faces found, MAE {f['MAE photo path']:.2f} "
                         f"against {f['MAE dataset crops']:.2f} from the dataset crops; in larger, tilted pictures "
                         f"{sc['found %']:.1f}% found, MAE {sc['MAE photo path']:.2f}.")
    clean = corrupted[corrupted["corruption"] == "none"].iloc[0]
    bad = corrupted[corrupted["corruption"] != "none"]
    raised = bad[bad["95% low"] > 0].sort_values("MAE change", ascending=False)
    unchanged = bad[(bad["95% low"] <= 0) & (bad["95% high"] >= 0)]
    text = f"Poor photos: clean MAE {clean['MAE']:.2f}; {len(raised)} of {len(bad)} corruptions raise the error"
    if len(raised):
        text += ", most " + "; ".join(f"{r['corruption']} {r['strength']} {r['MAE change']:+.2f} (95% {r['95% low']:.2f} "
                                      f"to {r['95% high']:.2f})" for _, r in raised.head(3).iterrows())
    if len(unchanged):
        text += "; no change detected under " + ", ".join(f"{r['corruption']} {r['strength']}" for _, r in unchanged.iterrows())
    lines.append(text + ".")
    if worst_photos is not None:
        through = worst_photos[worst_photos["corruption"] != "none"]
        lines.append("Through the photo path: " + "; ".join(
            f"{r['corruption']} {r['strength']}: {r['found %']:.0f}% found, MAE {r['MAE photo path']:.2f}"
            for _, r in through.iterrows()) + ".")
    return "\n".join(lines)
