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
    ax.legend(fontsize=7, loc="upper right", frameon=False)


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
