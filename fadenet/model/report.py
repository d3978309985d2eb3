"""Tables and the block diagram of the architecture chapter (notebook 02); the variants' tables
are in :mod:`fadenet.variants`."""
from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.patches import FancyBboxPatch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops.misc import SqueezeExcitation

from ..config import ModelConfig
from ..io import shown_path
from .backbones import AUTO_ORDER
from .network import AgeNet, CoordinateAttention, build_model
from .predict import eval_mode
from .summary import count_macs, parameter_table
from .weights import resolve_backbone, weight_file, weights_obtainable


def part_costs(model: AgeNet, size: int = 224) -> pd.DataFrame:
    """Parameters and multiply-adds of each part (the parts of :func:`parameter_table`)."""
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    flops = counter.get_flop_counts()

    def macs_of(path: str) -> int:
        return sum(flops.get(path, {}).values()) // 2

    prefix = type(model).__name__
    macs = {"attention": sum(macs_of(f"{prefix}.{name}") for name, m in model.named_modules()
                             if isinstance(m, (CoordinateAttention, SqueezeExcitation))),
            "fusion": macs_of(f"{prefix}.fusion"), "spp": macs_of(f"{prefix}.spp"),
            "head": macs_of(f"{prefix}.head")}
    # AgeNet runs its backbone block by block, so the backbone has no total of its own
    macs = {"backbone": macs_of("Global") - sum(macs.values()), **macs}
    macs["total"] = macs_of("Global")
    table = parameter_table(model)[["parameters"]].copy()
    table[f"M multiply-adds @{size}px"] = (pd.Series(macs) / 1e6).round(1)
    table["share of multiply-adds %"] = (100 * pd.Series(macs) / macs["total"]).round(1)
    return table


def input_sizes(model: AgeNet, sizes=(64, 128, 224, 320)) -> pd.DataFrame:
    """Map sizes at the fusion taps and the last block, the logits' shape and the cost,
    for square inputs of each size: no layer fixes the input size."""
    rows = []
    for size in sizes:
        shapes = dict(model.feature_shapes(torch.zeros(1, 3, size, size)))
        texture_at, semantic_at = model.taps
        row = {"input": f"{size}x{size}"}
        if model.fusion is not None:
            row["texture tap"] = _hw(shapes[f"backbone.{texture_at}"])
            row["semantic tap"] = _hw(shapes[f"backbone.{semantic_at}"])
        row["last map"] = _hw(shapes[f"backbone.{len(model.backbone) - 1}"])
        row["logits"] = "x".join(map(str, shapes["logits"]))
        row["M multiply-adds"] = round(count_macs(model, size) / 1e6, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def feature_shape_table(cfg_model: ModelConfig, size: int) -> pd.DataFrame:
    """The shape after every backbone block and after fusion, SPP, pooling and the head, for
    one ``size`` x ``size`` image, with each map's stride, its attention and its role."""
    model = build_model(_shapes_only(cfg_model))
    blocks = [f"backbone.{name}" for name, _ in model.backbone.named_children()]
    roles = {blocks[-1]: "SPP input" if model.spp is not None else "global average pooling input",
             "fusion": "fusion map -> GAP -> 128-d", "spp": "SPP output -> GAP -> 512-d",
             "pooled": "head input (pooled vectors, concatenated)", "logits": "one logit per age"}
    if model.fusion is not None:
        texture_at, semantic_at = model.taps
        roles[blocks[texture_at]] = "texture tap -> fusion"
        roles[blocks[semantic_at]] = "semantic tap -> fusion"
    attention = {name: _attention_kind(block) for name, block in zip(blocks, model.backbone)}
    rows = []
    for name, shape in model.feature_shapes(torch.zeros(1, 3, size, size)):
        spatial = len(shape) == 4
        rows.append({"layer": name, "channels": shape[1], "map": _hw(shape) if spatial else "",
                     "stride": round(size / shape[2]) if spatial else "",
                     "attention": attention.get(name, ""), "role": roles.get(name, "")})
    return pd.DataFrame(rows)


def backbone_choice(cfg_model: ModelConfig) -> str:
    """Which backbone ``cfg_model`` resolves to, and why."""
    chosen = resolve_backbone(cfg_model)
    if cfg_model.backbone != "auto":
        return f"model.backbone={chosen} is set explicitly; nothing is chosen automatically."
    if cfg_model.pretrained == "none":
        return f"model.backbone=auto with model.pretrained=none: {chosen}, from random weights as asked."
    lines = [f"model.backbone=auto resolves to {chosen} here. ImageNet weights, in order of preference:"]
    lines += [f"  {name}: {'obtainable' if weights_obtainable(name) else 'NOT obtainable'} "
              f"({shown_path(weight_file(name), [('$TORCH_HOME/hub', torch.hub.get_dir())])} "
              f"{'is present' if weight_file(name).is_file() else 'is absent'})"
              for name in AUTO_ORDER]
    if not weights_obtainable(chosen):
        lines.append(f"Neither file can be had, so {chosen} starts from RANDOM weights.")
    return "\n".join(lines)


# ---- the block diagram ---------------------------------------------------------------------
COLOURS = {  # (face, edge) per kind of module
    "io": ("#ffffff", "#555555"), "backbone": ("#dce6f2", "#4a6fa5"), "ca": ("#fbdcb8", "#d9822b"),
    "fusion": ("#d6ecd5", "#4b9a4a"), "spp": ("#e6d9f1", "#7b58a6"), "head": ("#f5d5d5", "#b44b4b"),
}
LEGEND = {"backbone": "MobileNetV3-Large (ImageNet weights in the paper)", "ca": "coordinate attention (new)",
          "fusion": "multi-scale feature fusion (new)", "spp": "spatial pyramid pooling (new)",
          "head": "head (new)"}


def draw_architecture() -> plt.Figure:
    """A block diagram of FADE-Net at 224×224: backbone, where CA sits, the two fusion taps,
    SPP on the last map, and the head that turns 81 logits into an expected age."""
    fig, ax = plt.subplots(figsize=(12.5, 8.2))
    ax.set_xlim(0, 12.5)
    ax.set_ylim(0, 8.2)
    ax.axis("off")
    x = [0.85 + 1.55 * i for i in range(8)]  # centres of the backbone boxes
    top = 7.0
    backbone = [
        ("io", "input\n3 × 224 × 224"),
        ("backbone", "block 0: stem\nconv 3×3, s2\n16 ch, 112×112"),
        ("backbone", "blocks 1-3\n16 → 24 ch\ns4, 56×56"),
        ("backbone", "blocks 4-6 (SE)\n40 ch\ns8, 28×28"),
        ("backbone", "blocks 7-11\n80 → 112 ch\ns16, 14×14"),
        ("ca", "block 12 (CA)\n112 ch\ns16, 14×14"),
        ("ca", "blocks 13-15 (CA)\n160 ch\ns32, 7×7"),
        ("backbone", "block 16\nconv 1×1\n960 ch, s32, 7×7"),
    ]
    for i, (kind, text) in enumerate(backbone):
        _box(ax, x[i], top, 1.38, 1.05, text, kind)
        if i:
            _arrow(ax, [(x[i - 1] + 0.69, top), (x[i] - 0.69, top)])
    ax.text((x[1] + x[7]) / 2, top + 0.8, "MobileNetV3-Large features (torchvision blocks 0-16)",
            ha="center", fontsize=10, weight="bold")
    ax.text(x[6], top - 0.62, "CA replaces SE in the\nlast four SE blocks (12-15);\nblocks 4-6 and 11 keep SE",
            ha="center", va="top", fontsize=8, color=COLOURS["ca"][1])

    # multi-scale feature fusion: texture tap (block 6) and semantic tap (block 12)
    tex, sem, mid = x[3], x[5], (x[3] + x[5]) / 2
    _box(ax, tex, 5.0, 2.0, 0.72, "texture (block 6)\n1×1 conv 40 → 64, BN, ReLU", "fusion")
    _box(ax, tex, 3.95, 2.0, 0.6, "avg-pool 2×2\n28×28 → 14×14", "fusion")
    _box(ax, sem, 5.0, 2.0, 0.72, "semantic (block 12)\n1×1 conv 112 → 64, BN, ReLU", "fusion")
    _box(ax, mid, 2.85, 2.5, 0.72, "softmax-weighted sum\nw_t · texture + w_s · semantic", "fusion")
    _box(ax, mid, 1.85, 2.5, 0.6, "1×1 conv 64 → 128\nGAP → 128-d", "fusion")
    _arrow(ax, [(tex, top - 0.53), (tex, 5.36)])
    _arrow(ax, [(sem, top - 0.53), (sem, 5.36)])
    _arrow(ax, [(tex, 4.64), (tex, 4.25)])
    _arrow(ax, [(tex, 3.65), (mid - 0.5, 3.21)])
    _arrow(ax, [(sem, 4.64), (mid + 0.5, 3.21)])
    _arrow(ax, [(mid, 2.49), (mid, 2.15)])

    # spatial pyramid pooling on the last map
    spp = 11.0
    _box(ax, spp, 4.85, 2.4, 0.95, "SPP: concat of the map and its\nmax-pools 5, 9, 13 (three cascaded\n"
         "5×5 pools) → 4 × 960 = 3840 ch", "spp")
    _box(ax, spp, 3.7, 2.4, 0.72, "1×1 conv 3840 → 512\nBN, hardswish", "spp")
    _box(ax, spp, 2.75, 2.4, 0.6, "GAP → 512-d", "spp")
    _arrow(ax, [(x[7], top - 0.53), (x[7], 5.33)])
    _arrow(ax, [(spp, 4.37), (spp, 4.06)])
    _arrow(ax, [(spp, 3.34), (spp, 3.05)])

    # head: both vectors meet in the first box of the bottom row
    head_y = 0.55
    head = [("head", "concat\n512 + 128 = 640"), ("head", "Linear 640 → 1024\nhardswish"),
            ("head", "dropout 0.35"), ("head", "Linear 1024 → 81\n(logits)"),
            ("head", "softmax: p(age)\nages 0..80"), ("io", "expected age\nΣ age × p(age)")]
    hx = [1.2 + 1.95 * i for i in range(len(head))]
    for i, (kind, text) in enumerate(head):
        _box(ax, hx[i], head_y, 1.6, 0.8, text, kind)
        if i:
            _arrow(ax, [(hx[i - 1] + 0.8, head_y), (hx[i] - 0.8, head_y)])
    _arrow(ax, [(mid - 1.25, 1.85), (hx[0] - 0.3, 1.85), (hx[0] - 0.3, head_y + 0.4)])
    _arrow(ax, [(spp, 2.45), (spp, 1.3), (hx[0] + 0.3, 1.3), (hx[0] + 0.3, head_y + 0.4)])

    handles = [FancyBboxPatch((0, 0), 1, 1, facecolor=COLOURS[k][0], edgecolor=COLOURS[k][1])
               for k in LEGEND]
    ax.legend(handles, LEGEND.values(), loc="upper left", bbox_to_anchor=(0.0, 0.71), fontsize=8.5,
              frameon=False)
    fig.tight_layout()
    return fig


def _box(ax, x: float, y: float, w: float, h: float, text: str, kind: str) -> None:
    face, edge = COLOURS[kind]
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=face, edgecolor=edge, linewidth=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=8.5, linespacing=1.3)


def _arrow(ax, points: list[tuple[float, float]]) -> None:
    """A line through ``points`` with an arrowhead on its last segment."""
    for a, b in zip(points[:-2], points[1:-1]):
        ax.plot([a[0], b[0]], [a[1], b[1]], color="0.3", lw=1.1, solid_capstyle="butt")
    ax.annotate("", xy=points[-1], xytext=points[-2],
                arrowprops={"arrowstyle": "-|>", "color": "0.3", "lw": 1.1, "shrinkA": 0, "shrinkB": 0})


# ---- helpers -------------------------------------------------------------------------------
def _shapes_only(cfg_model: ModelConfig) -> ModelConfig:
    # the automatic choice depends on which weights exist; the network is built without them
    return dataclasses.replace(cfg_model, backbone=resolve_backbone(cfg_model))


def _attention_kind(block: nn.Module) -> str:
    kinds = {type(m) for m in block.modules()}
    return "CA" if CoordinateAttention in kinds else "SE" if SqueezeExcitation in kinds else ""


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[2]}x{shape[3]}"


def chapter_summary(cost: pd.DataFrame, variants: pd.DataFrame) -> str:
    """Chapter 02's findings in sentences, from its cost and variant tables."""
    params, macs = "parameters, measured here", "M multiply-adds @224px, measured here"
    fade, vanilla = cost.iloc[0], cost.iloc[1]
    by = variants.set_index("variant")
    return "\n".join([
        f"FADE-Net (paper configuration): {fade[params]:,} parameters and {fade[macs]:.1f}M multiply-adds "
        f"at 224 px, against {vanilla[params]:,} and {vanilla[macs]:.1f}M for the MobileNetV3-Large classifier: "
        f"{vanilla[params] - fade[params]:,} fewer parameters, {fade[macs] / vanilla[macs]:.2f} times the computation.",
        f"SPP is the costly idea: without it {by.loc['-spp', 'M multiply-adds @224px']:.1f}M multiply-adds "
        f"(the baseline {by.loc['baseline', 'M multiply-adds @224px']:.1f}M); coordinate attention removes "
        f"parameters ({by.loc['-ca', 'parameters']:,} with SE kept).",
    ])
