"""The one list of backbones: for each, torchvision's builder and ImageNet weights, the name a
reader sees, and where FADE-Net's additions attach. Config validation, the automatic choice,
the weights loader, the variants and the command line all read it from here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torchvision.models as tvm
from torch import nn

from ..config import ConfigError

AUTO = "auto"  # model.backbone=auto: the first of AUTO_ORDER whose ImageNet weights can be had
AUTO_ORDER = ("mobilenet_v3_large", "mobilenet_v2")


@dataclass(frozen=True)
class Backbone:
    name: str
    title: str                                      # as a reader says it
    builder: Callable[[], nn.Module]
    weights: tvm.WeightsEnum                        # torchvision's ImageNet weights
    channels: int                                   # channels of the last feature map
    texture_tap: tuple[int, int] | None = None      # (block index, channels) at stride 8
    semantic_tap: tuple[int, int] | None = None     # (block index, channels) at stride 16
    attention_blocks: tuple[int, ...] = ()          # blocks that get coordinate attention

    @property
    def fusable(self) -> bool:
        """Whether FADE-Net's additions (fusion taps, attention blocks) are defined for it."""
        return self.texture_tap is not None


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    # Taps at blocks 6 and 12 (stride 8 and 16) and attention in the last four blocks, as in the
    # FADE-Net authors' code; MobileNetV2's taps are its blocks at the same strides.
    Backbone("mobilenet_v3_large", "MobileNetV3-Large", tvm.mobilenet_v3_large,
             tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V2, 960, (6, 40), (12, 112), (12, 13, 14, 15)),
    Backbone("mobilenet_v2", "MobileNetV2", tvm.mobilenet_v2, tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
             1280, (6, 32), (13, 96), (14, 15, 16, 17)),
    Backbone("mobilenet_v3_small", "MobileNetV3-Small", tvm.mobilenet_v3_small,
             tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1, 576),
    Backbone("resnet18", "ResNet-18", tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, 512),
)}


def backbone_choices() -> tuple[str, ...]:
    """The values model.backbone accepts."""
    return (AUTO, *BACKBONES)


def backbone(name: str) -> Backbone:
    """The registry entry of a resolved backbone name, or one clear error naming the key."""
    if name == AUTO:
        raise ConfigError("model.backbone=auto must be resolved first (fadenet.resolve.resolve)")
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone={name!r} is not one of {', '.join(backbone_choices())}")
    return BACKBONES[name]
