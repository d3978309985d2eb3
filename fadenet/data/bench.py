"""``python -m fadenet bench data``: how fast the training input pipeline delivers batches."""
from __future__ import annotations

import time

import numpy as np
import torch

from .cache import FaceSet
from .loader import Batches


def loader_rate(faces: FaceSet, rows: np.ndarray, batch_size: int = 64, batches: int = 30,
                seed: int = 0, device: str | torch.device = "cpu") -> float:
    """Augmented training images per second delivered by :class:`Batches` on ``device`` (on a
    GPU: gathered on the CPU, augmented on the GPU, timed until the GPU has finished)."""
    device = torch.device(device)
    it = iter(Batches(faces.images, faces.ages, rows, batch_size, train=True, seed=seed, device=device))
    next(it)  # first batch pays one-off costs (page cache, allocator, CUDA kernels)
    start, count = time.perf_counter(), 0
    for _, (x, _, _) in zip(range(batches), it):
        count += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)
