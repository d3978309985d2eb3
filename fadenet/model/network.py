"""FADE-Net and its baselines: a torchvision backbone, optional coordinate attention,
multi-scale feature fusion and spatial pyramid pooling, and an 81-way age head."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from ..config import ConfigError, ModelConfig
from .backbones import BACKBONES, Backbone, backbone
from .predict import eval_mode
from .weights import load_pretrained

FUSION_CHANNELS = 64
FUSION_OUT = 128
SPP_OUT = 512
SPP_KERNELS = (5, 9, 13)


RESNET_BLOCKS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021): channel weights that keep the position
    along each axis, so the network can weigh where wrinkles and contours lie."""

    def __init__(self, channels: int):
        super().__init__()
        mid = max(8, channels // 16)
        self.shared = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.BatchNorm2d(mid), nn.Hardswish())
        self.along_h = nn.Conv2d(mid, channels, 1)
        self.along_w = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        pooled_h = x.mean(3, keepdim=True)                        # B,C,H,1
        pooled_w = x.mean(2, keepdim=True).transpose(2, 3)        # B,C,W,1
        y = self.shared(torch.cat([pooled_h, pooled_w], dim=2))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        gate_h = torch.sigmoid(self.along_h(y_h))
        gate_w = torch.sigmoid(self.along_w(y_w.transpose(2, 3)))
        return x * gate_h * gate_w


class MultiScaleFusion(nn.Module):
    """Mixes a stride-8 texture map into the stride-16 semantic map with two learnable,
    softmax-normalised weights and lifts the mix to 128 channels."""

    def __init__(self, texture_channels: int, semantic_channels: int):
        super().__init__()
        self.texture = _project(texture_channels, FUSION_CHANNELS)
        self.semantic = _project(semantic_channels, FUSION_CHANNELS)
        # ceil_mode keeps the size equal to the semantic map's (a stride-2 conv's ceil(n/2)) for
        # odd sizes too; a fixed stride, unlike adaptive pooling, exports to ONNX for any size.
        self.downsample = nn.AvgPool2d(2, stride=2, ceil_mode=True)
        self.mix = nn.Parameter(torch.zeros(2))
        self.lift = nn.Conv2d(FUSION_CHANNELS, FUSION_OUT, 1, bias=False)

    def forward(self, texture: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.mix, dim=0)
        mixed = weights[0] * self.downsample(self.texture(texture)) + weights[1] * self.semantic(semantic)
        return self.lift(mixed)


class SpatialPyramidPooling(nn.Module):
    """The map concatenated with its stride-1 max-pools of kernel 5, 9 and 13, projected to
    512 channels. ``fast`` cascades 5x5 pools (SPPF); max-pools compose exactly, so both
    forms give identical numbers and the cascade is cheaper."""

    def __init__(self, channels: int, fast: bool = True):
        super().__init__()
        self.fast = fast
        self.conv = nn.Conv2d(channels * (1 + len(SPP_KERNELS)), SPP_OUT, 1, bias=False)
        self.bn = nn.BatchNorm2d(SPP_OUT)
        self.act = nn.Hardswish()

    def extra_repr(self) -> str:
        return f"fast={self.fast}"

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.fast:
            return [x] + [F.max_pool2d(x, k, stride=1, padding=k // 2) for k in SPP_KERNELS]
        levels = [x]
        for _ in SPP_KERNELS:
            levels.append(F.max_pool2d(levels[-1], 5, stride=1, padding=2))
        return levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(torch.cat(self.pyramid(x), dim=1))))


class AgeNet(nn.Module):
    """Backbone -> [SPP] and [texture/semantic fusion] -> pooled vectors -> head -> 81 logits."""

    def __init__(self, backbone: nn.Sequential, head: nn.Sequential, meta: dict,
                 spp: SpatialPyramidPooling | None = None, fusion: MultiScaleFusion | None = None,
                 taps: tuple[int, int] = (-1, -1)):
        super().__init__()
        self.backbone = backbone
        self.spp = spp
        self.fusion = fusion
        self.head = head
        self.taps = taps
        self.meta = meta

    def extra_repr(self) -> str:
        return f"taps={self.taps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        texture_at, semantic_at = self.taps
        for i, block in enumerate(self.backbone):
            x = block(x)
            if i == texture_at:
                texture = x
            elif i == semantic_at:
                semantic = x
        pooled = [_global_pool(self.spp(x) if self.spp is not None else x)]
        if self.fusion is not None:
            pooled.append(_global_pool(self.fusion(texture, semantic)))
        return self.head(torch.cat(pooled, dim=1))

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters that came from ImageNet weights (none after random init);
        the coordinate-attention modules added to the backbone are new and not among them."""
        if self.meta["pretrained"] != "imagenet":
            return []
        new = {id(p) for m in _coordinate_attention_modules(self.backbone) for p in m.parameters()}
        return [p for p in self.backbone.parameters() if id(p) not in new]

    def freeze_batchnorm(self, parameters: list[nn.Parameter]) -> None:
        """Put the BatchNorm layers whose scale is among ``parameters`` in eval mode, so that while
        those layers are frozen their running statistics stay as well."""
        frozen = {id(p) for p in parameters}
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and id(m.weight) in frozen:
                m.eval()

    def optimizer_groups(self, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict]:
        """Parameter groups for an optimiser, each with its ``lr_scale`` (the trainer multiplies
        the scheduled rate by it). Weight decay on weight matrices and kernels only: decaying
        BatchNorm scales and biases pulls them towards zero for no regularising benefit. The
        ImageNet layers learn at ``backbone_lr_scale`` times the rate of the new layers."""
        pretrained = {id(p) for p in self.pretrained_parameters()}
        groups = []
        for is_pretrained in (True, False):
            params = [p for p in self.parameters() if (id(p) in pretrained) == is_pretrained]
            scale = backbone_lr_scale if is_pretrained else 1.0
            groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lr_scale": scale},
                       {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
        return [g for g in groups if g["params"]]

    def cam_layers(self) -> dict[str, nn.Module]:
        """Layers whose activations Grad-CAM can explain."""
        attention = [m for m in self.backbone.modules()
                     if isinstance(m, (CoordinateAttention, SqueezeExcitation))]
        layers = {"attention": attention[-1] if attention else self.backbone[-1],
                  "spp": self.spp.act if self.spp is not None else self.backbone[-1]}
        if self.fusion is not None:
            layers["fusion"] = self.fusion.lift
        return layers

    def feature_shapes(self, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) after each backbone block, the fusion and SPP maps, the pooled vector
        and the logits, for input ``x``; runs in eval mode without touching any statistics."""
        shapes: list[tuple[str, tuple[int, ...]]] = []

        def record(name: str, use_input: bool = False) -> Callable:
            def hook(module, inputs, output=None):
                shapes.append((name, tuple((inputs[0] if use_input else output).shape)))
            return hook

        watched = [(f"backbone.{n}", m) for n, m in self.backbone.named_children()]
        watched += [(n, m) for n, m in (("fusion", self.fusion), ("spp", self.spp)) if m is not None]
        handles = [m.register_forward_hook(record(n)) for n, m in watched]
        handles.append(self.head.register_forward_pre_hook(record("pooled", use_input=True)))
        handles.append(self.head.register_forward_hook(record("logits")))
        try:
            with eval_mode(self), torch.no_grad():
                self(x)
        finally:
            for handle in handles:
                handle.remove()
        return shapes


def build_model(cfg: ModelConfig, weights: bool = False) -> AgeNet:
    """The network that ``cfg`` describes (its backbone resolved: see :func:`fadenet.resolve.resolve`).
    With ``weights``, the backbone starts from its ImageNet weights as ``cfg.pretrained`` asks
    (``imagenet``: or an error; ``auto``: or random weights with a warning; see
    :mod:`fadenet.model.weights`); without, from random weights, as sizes, costs and networks
    whose weights come from a checkpoint need."""
    spec = _backbone_spec(cfg)
    model = spec.builder()
    source, warning = load_pretrained(model, spec.name, cfg.pretrained if weights else "none")
    backbone_blocks = _feature_blocks(model)
    meta = {"arch": cfg.arch, "backbone": cfg.backbone, "pretrained": source, "init_warning": warning}
    fadenet = cfg.arch == "fadenet"
    if fadenet and cfg.ca:
        for index in spec.attention_blocks:
            _add_coordinate_attention(backbone_blocks[index])
    spp = SpatialPyramidPooling(spec.channels, cfg.fast_spp) if fadenet and cfg.spp else None
    fusion = MultiScaleFusion(spec.texture_tap[1], spec.semantic_tap[1]) if fadenet and cfg.msff else None
    features = (SPP_OUT if spp else spec.channels) + (FUSION_OUT if fusion else 0)
    head = nn.Sequential(nn.Linear(features, cfg.hidden), nn.Hardswish(), nn.Dropout(cfg.dropout),
                         nn.Linear(cfg.hidden, cfg.num_classes))
    taps = (spec.texture_tap[0], spec.semantic_tap[0]) if fusion else (-1, -1)
    net = AgeNet(backbone_blocks, head, meta, spp=spp, fusion=fusion, taps=taps)
    for module in (spp, fusion, head, *_coordinate_attention_modules(backbone_blocks)):
        if module is not None:
            _init_new_layers(module)
    return net


def _backbone_spec(cfg: ModelConfig) -> Backbone:
    spec = backbone(cfg.backbone)
    if cfg.arch not in ("fadenet", "baseline"):
        raise ConfigError(f"model.arch={cfg.arch!r} is not one of fadenet, baseline")
    if cfg.arch == "fadenet" and not spec.fusable:
        supported = [b.name for b in BACKBONES.values() if b.fusable]
        raise ConfigError(f"model.arch='fadenet' needs backbone {' or '.join(supported)}; "
                          f"{cfg.backbone} is available as arch='baseline' only")
    return spec


def _feature_blocks(model: nn.Module) -> nn.Sequential:
    """The convolutional part of a torchvision classifier as a sequence of blocks."""
    if hasattr(model, "features"):
        return model.features
    return nn.Sequential(OrderedDict((name, getattr(model, name)) for name in RESNET_BLOCKS))


def _add_coordinate_attention(block: nn.Module) -> None:
    """Replace the block's squeeze-excitation by coordinate attention (MobileNetV3), or put
    coordinate attention where MobileNetV3 has it, right after the depthwise conv (MobileNetV2)."""
    layers = block.block if hasattr(block, "block") else block.conv
    for i, layer in enumerate(layers):
        if isinstance(layer, SqueezeExcitation):
            layers[i] = CoordinateAttention(layer.fc1.in_channels)
            return
    depthwise = layers[1][0]
    layers.insert(2, CoordinateAttention(depthwise.out_channels))


def _coordinate_attention_modules(backbone: nn.Module) -> list[nn.Module]:
    return [m for m in backbone.modules() if isinstance(m, CoordinateAttention)]


def _project(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


def _global_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))


def _init_new_layers(module: nn.Module) -> None:
    """The initialisation torchvision gives MobileNets, for the layers FADE-Net adds."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)
