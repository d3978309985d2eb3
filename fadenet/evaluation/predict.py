"""Predicted age distributions for cached faces, with optional test-time augmentation (TTA).

TTA modes: ``none`` (the image), ``flip`` (the image and its mirror) and ``multi`` (each of
the scales 0.9, 1.0, 1.1, a scaled view being resized and then centre-cropped or edge-padded
back to the input size, each with its mirror: 6 views). The views' probability distributions
are averaged, as are several models' in an ensemble.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.loader import Batches
from ..model import eval_mode


def tta_views(x: torch.Tensor, mode: str, scales: Sequence[float] = (0.9, 1.0, 1.1)) -> list[torch.Tensor]:
    """The views of a normalised batch that ``mode`` averages over."""
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, x.flip(-1)]
    if mode == "multi":
        views = []
        for s in scales:
            v = rescale(x, s)
            views += [v, v.flip(-1)]
        return views
    raise ValueError(f"TTA mode {mode!r} is not one of none, flip, multi")


def rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Zoom the batch by ``scale`` about its centre, keeping its size (1.0 returns ``x``)."""
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    y = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
    if scale > 1:
        top, left = (nh - h) // 2, (nw - w) // 2
        return y[..., top:top + h, left:left + w]
    top, left = (h - nh) // 2, (w - nw) // 2
    return F.pad(y, (left, w - nw - left, top, h - nh - top), mode="replicate")


@torch.inference_mode()
def predict_probs(models: torch.nn.Module | Sequence[torch.nn.Module], images: np.ndarray, rows: np.ndarray,
                  tta: str = "none", scales: Sequence[float] = (0.9, 1.0, 1.1), batch_size: int = 128,
                  device: str | torch.device = "cpu", progress: bool = False, precision: str = "fp32") -> np.ndarray:
    """Predicted age distributions (N, K) of the uint8 faces ``images[rows]``, averaged over the
    TTA views of ``tta`` and over ``models`` (an ensemble), in float32. ``precision`` bf16 or
    fp16 runs the networks under autocast (a run's ``train.precision``: the one it learnt in)."""
    models = [models] if isinstance(models, torch.nn.Module) else list(models)
    batches = Batches(images, np.zeros(len(images), np.float32), rows, batch_size)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    out = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(torch.device(device).type, dtype=dtype or torch.float32,
                                           enabled=dtype is not None))
        for model in models:
            stack.enter_context(eval_mode(model))
        for x, _, _ in tqdm(batches, desc=f"predict (TTA {tta})", unit="batch", disable=not progress):
            views = tta_views(x.to(device), tta, scales)
            total = sum(torch.softmax(model(view).float(), dim=1) for model in models for view in views)
            out.append((total / (len(models) * len(views))).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def expected_age(probs: np.ndarray) -> np.ndarray:
    return probs @ np.arange(probs.shape[1], dtype=probs.dtype)
