"""Size and cost of a network: parameters per part and multiply-adds per image."""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops.misc import SqueezeExcitation

from .network import AgeNet, CoordinateAttention
from .predict import eval_mode


def count_parameters(module: nn.Module | None) -> int:
    """Number of parameters (trainable or not) of ``module``; 0 for None."""
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def parameter_table(model: AgeNet) -> pd.DataFrame:
    """Parameters of backbone (without its attention modules), attention (CA or SE modules
    inside the backbone), fusion, spp, head and their total, with each part's share."""
    attention = sum(count_parameters(m) for m in model.backbone.modules()
                    if isinstance(m, (CoordinateAttention, SqueezeExcitation)))
    counts = {"backbone": count_parameters(model.backbone) - attention, "attention": attention,
              "fusion": count_parameters(model.fusion), "spp": count_parameters(model.spp), "head": count_parameters(model.head)}
    counts["total"] = sum(counts.values())
    table = pd.DataFrame({"parameters": counts})
    table.index.name = "part"
    table["share %"] = (100 * table["parameters"] / counts["total"]).round(1)
    return table


def count_macs(model: nn.Module, size: int = 224) -> int:
    """Multiply-adds for one ``size`` x ``size`` RGB image, in eval mode.

    Convention: 1 multiply-add = 2 FLOPs; torch's FlopCounterMode is used and only
    convolutions, linear layers and matrix products are counted (activations, normalisation,
    pooling and element-wise products are not), as in the usual "MAdds" of MobileNet papers.
    """
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size, device=device))
    return counter.get_total_flops() // 2


def format_summary(model: AgeNet, size: int = 224) -> str:
    """The parameter table as aligned text and the multiply-add count with its convention."""
    table = parameter_table(model)
    lines = [f"{part:<10} {count:>12,} {share:>6.1f} %"
             for part, count, share in zip(table.index, table["parameters"], table["share %"])]
    macs = count_macs(model, size)
    lines.append(f"multiply-adds at {size}x{size}: {macs / 1e6:,.1f} M "
                 "(1 multiply-add = 2 FLOPs; conv, linear and matmul only)")
    return "\n".join(lines)
