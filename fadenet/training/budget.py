"""Training compute, counted in epoch-equivalents rather than seconds (machines are shared and
their speed varies): one epoch-equivalent is what one epoch of the whole training split costs at
``UNIT_SIZE`` pixels, for the network being trained. A run's compute is the sum over its epochs of
images trained x multiply-adds per image at that epoch's size, in that unit; the backward pass
costs a fixed multiple of the forward pass, so the ratio of forward multiply-adds is the ratio of
training compute.
"""
from __future__ import annotations

from torch import nn

from ..model import count_macs

UNIT_SIZE = 112  # px: the reference profile's input size


def stage_size(sizes: tuple[int, ...], epoch: int, epochs: int, default: int) -> int:
    """The training size of ``epoch`` (0-based) under progressive resizing: ``sizes`` in equal
    stages of the ``epochs`` (the first stages shorter where they do not divide evenly);
    ``default`` when no sizes are given."""
    if not sizes:
        return default
    return sizes[min(len(sizes) - 1, epoch * len(sizes) // max(1, epochs))]


class ComputeMeter:
    """Epoch-equivalents of a network trained on ``train_faces`` faces an epoch-equivalent;
    multiply-adds are counted once per input size."""

    def __init__(self, model: nn.Module, train_faces: int):
        self.model, self.train_faces = model, train_faces
        self._macs: dict[int, int] = {}

    def macs(self, size: int) -> int:
        if size not in self._macs:
            self._macs[size] = count_macs(self.model, size)
        return self._macs[size]

    def epoch_equivalents(self, images: int, size: int) -> float:
        """The cost of training ``images`` faces at ``size`` px."""
        return images * self.macs(size) / (self.train_faces * self.macs(UNIT_SIZE))
