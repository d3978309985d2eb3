"""What happens to a photo that is compressed, blurred, small, dark, noisy or partly covered.

Each corruption has two strengths and is applied to a face picture, then the model predicts as
usual. Sizes (blur radius, band position) are fractions of the face's side, so the same
corruption means the same thing for a 112 px crop and for the face inside a larger photo:
``box`` gives where the face is ((centre x, centre y, side) in pixels; default: the whole
picture is the face crop).

:func:`corruption_table` scores the dataset path (cached test crops); :func:`photo_path_table`
sends corrupted image files through the whole photo path (detect, align, predict).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from ..data.loader import FACE_ZONES
from .metrics import bootstrap_mean

EYES = (float(FACE_ZONES[:2, 1].min()), float(FACE_ZONES[:2, 3].max()))  # rows of the eye zones
MOUTH = (float(FACE_ZONES[3, 1]), float(FACE_ZONES[3, 3]))


@dataclass(frozen=True)
class Corruption:
    name: str      # as a reader says it
    strength: str  # the level, in words
    level: float


CORRUPTIONS = (
    Corruption("JPEG compression", "quality 30", 30), Corruption("JPEG compression", "quality 10", 10),
    Corruption("Gaussian blur", "σ 1% of the face", 0.01), Corruption("Gaussian blur", "σ 2% of the face", 0.02),
    Corruption("low resolution", "1/2 and back", 2), Corruption("low resolution", "1/4 and back", 4),
    Corruption("brightness", "-40%", -0.4), Corruption("brightness", "+40%", 0.4),
    Corruption("Gaussian noise", "σ 10 of 255", 10), Corruption("Gaussian noise", "σ 25 of 255", 25),
    Corruption("black band", "over the eyes", 0), Corruption("black band", "over the mouth", 1),
)


def corrupt(rgb: np.ndarray, c: Corruption, box: tuple[float, float, float] | None = None,
            seed: int = 0) -> np.ndarray:
    """``rgb`` (H, W, 3 uint8) with corruption ``c``; ``box`` locates the face (see module)."""
    h, w = rgb.shape[:2]
    cx, cy, side = box if box is not None else (w / 2, h / 2, min(w, h))
    if c.name == "JPEG compression":
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(c.level)])
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if c.name == "Gaussian blur":
        return cv2.GaussianBlur(rgb, (0, 0), c.level * side)
    if c.name == "low resolution":
        small = cv2.resize(rgb, (max(1, round(w / c.level)), max(1, round(h / c.level))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if c.name == "brightness":
        return np.clip(rgb.astype(np.float32) * (1 + c.level), 0, 255).round().astype(np.uint8)
    if c.name == "Gaussian noise":
        noise = np.random.default_rng(seed).normal(0, c.level, rgb.shape)
        return np.clip(rgb + noise, 0, 255).round().astype(np.uint8)
    if c.name == "black band":
        top, bottom = EYES if c.level == 0 else MOUTH
        y0, y1 = (int(round(cy + (f - 0.5) * side)) for f in (top, bottom))
        out = rgb.copy()
        out[max(0, y0):max(0, y1)] = 0
        return out
    raise ValueError(f"unknown corruption {c.name!r}")


def corrupt_all(images: np.ndarray, c: Corruption, seed: int = 0) -> np.ndarray:
    """Every crop of ``images`` (N, S, S, 3) corrupted, each with its own noise draw."""
    return np.stack([corrupt(img, c, seed=seed + i) for i, img in enumerate(images)])


def _row(name: str, strength: str, predicted: np.ndarray, ages: np.ndarray, clean_error: np.ndarray,
         resamples: int, seed: int) -> dict:
    error = np.abs(predicted - ages)
    low, high = bootstrap_mean(error - clean_error, resamples=resamples, seed=seed)
    return {"corruption": name, "strength": strength, "faces": len(ages), "MAE": error.mean(),
            "mean error": (predicted - ages).mean(), "CS@5": (error <= 5).mean(),
            "MAE change": (error - clean_error).mean(), "95% low": low, "95% high": high}


def corruption_table(predict_ages, images: np.ndarray, ages: np.ndarray, corruptions=CORRUPTIONS,
                     seed: int = 0, resamples: int = 2000, progress=None) -> pd.DataFrame:
    """MAE, bias and CS@5 of ``predict_ages`` (uint8 crops -> predicted ages) on clean crops and
    under each corruption, with the change against clean and its 95% bootstrap interval over the
    faces (paired: the same faces clean and corrupted)."""
    ages = np.asarray(ages, dtype=np.float64)
    clean = np.asarray(predict_ages(images), dtype=np.float64)
    clean_error = np.abs(clean - ages)
    rows = [_row("none", "clean", clean, ages, clean_error, resamples, seed)]
    for c in (progress(corruptions) if progress else corruptions):
        rows.append(_row(c.name, c.strength, predict_ages(corrupt_all(images, c, seed)), ages, clean_error,
                         resamples, seed))
    table = pd.DataFrame(rows)
    table["verdict"] = [change_verdict(r) for r in table.to_dict("records")]
    return table


def change_verdict(row: dict) -> str:
    """What the interval of the MAE change supports."""
    if row["corruption"] == "none":
        return "reference"
    if row["95% low"] > 0:
        return f"raises MAE by {row['MAE change']:.2f} years"
    if row["95% high"] < 0:
        return f"lowers MAE by {-row['MAE change']:.2f} years"
    return "no change detected"


def strongest(table: pd.DataFrame, count: int = 3) -> list[Corruption]:
    """The ``count`` corruptions that raised the MAE most, as :data:`CORRUPTIONS` entries."""
    worst = table[table["corruption"] != "none"].nlargest(count, "MAE change")
    by_label = {(c.name, c.strength): c for c in CORRUPTIONS}
    return [by_label[(r.corruption, r.strength)] for r in worst.itertuples()]
