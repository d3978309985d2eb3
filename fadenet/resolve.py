"""One step from a configuration to what a command runs: each ``auto`` decided once.

:func:`resolve` is called once per command (training, the studies, the command line) and its
result handed down, so no layer works out the backbone, the weights, the crop or the run folder
again. What it decides depends on this machine (which ImageNet files exist, whether there is a
GPU, which dataset is under the data root), which is why it is a step and not a property of the
configuration.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config
from .data.cache import source_and_crop
from .model import build_model, resolve_backbone, weights_obtainable
from .model.network import AgeNet
from .runtime import auto_precision, pick_device


@dataclass(frozen=True)
class Resolved:
    config: Config        # a copy of the configuration with its automatic choices written in
    backbone: str         # the registry name (model.backbone=auto decided)
    weights: bool         # whether the backbone starts from ImageNet weights (model.pretrained)
    source: str           # the data source (data.source=auto decided)
    crop: str             # the face crop (data.crop=auto decided)
    precision: str        # train.precision=auto decided for the device
    device: torch.device  # train.device=auto decided
    run_folder: Path      # runs/<run id>: where a training run of this configuration lives

    def network(self, weights: bool | None = None) -> AgeNet:
        """The configured network; with ImageNet weights as resolved unless ``weights`` says
        otherwise (``False`` for sizes and costs, or weights that come from a checkpoint)."""
        return build_model(self.config.model, self.weights if weights is None else weights)


def resolve(cfg: Config) -> Resolved:
    """``cfg`` resolved. In the copy, ``model.backbone=auto`` becomes the backbone it picks and
    ``model.pretrained=auto`` becomes ``imagenet`` where those weights can be had (elsewhere it
    stays ``auto`` and the network falls back to random weights loudly), so that a run's
    identity says what it starts from: the same configuration on a machine with and one without
    the weights are different runs, and an ``auto`` run that got ImageNet weights is the same run
    as its ``imagenet`` twin. A backbone name outside the registry is one clear error here."""
    out = copy.deepcopy(cfg)
    device = pick_device(out.train.device)
    if out.train.precision == "auto":
        out.train.precision = auto_precision(device)
    out.model.backbone = resolve_backbone(out.model)
    if out.model.pretrained == "auto" and weights_obtainable(out.model.backbone):
        out.model.pretrained = "imagenet"
    source, crop = source_and_crop(out)
    out.data.crop = crop
    return Resolved(config=out, backbone=out.model.backbone, weights=out.model.pretrained != "none",
                    source=source, crop=crop, precision=out.train.precision, device=device,
                    run_folder=out.runs_path / out.run_id())
