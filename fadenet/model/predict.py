"""Inference: from uint8 faces to predicted age distributions and ages.

The network's input convention (RGB in [0, 1], ImageNet's mean and standard deviation) is
decided in :mod:`fadenet.data.tensors`.

Test-time augmentation (TTA) modes: ``none`` (the image), ``flip`` (the image and its mirror)
and ``multi`` (each of the scales 0.9, 1.0, 1.1, a scaled view being resized and then
centre-cropped or edge-padded back to the input size, each with its mirror: 6 views). The views'
probability distributions are averaged, as are several models' in an ensemble.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.tensors import normalize, to_tensor

TTA_SCALES = (0.9, 1.0, 1.1)


def predict(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(age distribution, expected age): softmax of the logits and its mean over ages 0..K-1."""
    probs = torch.softmax(logits, dim=-1)
    return probs, expected_age(probs)


def expected_age(probs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The mean of each age distribution (rows of ``probs`` over ages 0..K-1)."""
    if isinstance(probs, torch.Tensor):
        return (probs * torch.arange(probs.shape[-1], dtype=probs.dtype, device=probs.device)).sum(-1)
    return probs @ np.arange(probs.shape[-1], dtype=probs.dtype)


def age_spread(probs: np.ndarray) -> np.ndarray:
    """The standard deviation of each age distribution (rows of ``probs`` over ages 0..K-1), in
    float64: the variance is a difference of two large moments."""
    probs = np.asarray(probs, dtype=np.float64)
    bins = np.arange(probs.shape[-1], dtype=np.float64)
    mean = probs @ bins
    return np.sqrt(np.clip(probs @ bins**2 - mean**2, 0.0, None))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block, then the module's previous mode again. A model already in eval
    mode is left alone: switching walks every module, 6 ms of a 20 ms single-face prediction."""
    was_training = model.training
    if not was_training:
        yield model
        return
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def tta_views(x: torch.Tensor, mode: str, scales: Sequence[float] = TTA_SCALES) -> list[torch.Tensor]:
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
def predict_probs(models: nn.Module | Sequence[nn.Module], images: np.ndarray, rows: np.ndarray,
                  tta: str = "none", scales: Sequence[float] = TTA_SCALES, batch_size: int = 128,
                  device: str | torch.device = "cpu", progress: bool = False, precision: str = "fp32") -> np.ndarray:
    """Predicted age distributions (N, K) of the uint8 faces ``images[rows]``, averaged over the
    TTA views of ``tta`` and over ``models`` (an ensemble), in float32. ``precision`` bf16 or
    fp16 runs the networks under autocast."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    rows = np.asarray(rows)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    out = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(torch.device(device).type, dtype=dtype or torch.float32,
                                           enabled=dtype is not None))
        for model in models:
            stack.enter_context(eval_mode(model))
        starts = range(0, len(rows), batch_size)
        for start in tqdm(starts, desc=f"predict (TTA {tta})", unit="batch", disable=not progress):
            x = normalize(to_tensor(images[rows[start:start + batch_size]])).to(device)
            views = tta_views(x, tta, scales)
            total = sum(torch.softmax(model(view).float(), dim=1) for model in models for view in views)
            out.append((total / (len(models) * len(views))).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
