"""The network's input convention, decided here once: uint8 RGB faces become float tensors in
[0, 1], normalised with ImageNet's mean and standard deviation (what every backbone of the
registry learnt with), so that training, evaluation, deployment and the explorer all feed the
network the same way."""
from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    array = np.ascontiguousarray(images)
    if not array.flags.writeable:  # a slice of the read-only cache: torch wants memory it may own
        array = array.copy()
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - IMAGENET_MEAN.to(x.device)) / IMAGENET_STD.to(x.device)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    return x * IMAGENET_STD.to(x.device) + IMAGENET_MEAN.to(x.device)
