"""FADE-Net's three new blocks against computations written out by hand.

Each test builds the block's answer from its definition (the paper's equations, or PyTorch's
own pooling with the kernels named) and compares numbers, so that a block that skips a gate,
pools along the wrong axis, drops a branch or pools with the wrong kernels fails.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fadenet.model import CoordinateAttention, MultiScaleFusion, SpatialPyramidPooling


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights and BatchNorm statistics, in eval mode (fixed statistics)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return module.eval()


# ---- coordinate attention ---------------------------------------------------------------------

def _coordinate_attention_by_hand(ca: CoordinateAttention, x: torch.Tensor) -> torch.Tensor:
    """Hou et al. (2021): pool along W for each row and along H for each column, one shared
    1x1 conv + BN + h-swish over both, then a sigmoid gate per axis; out = x * g_h * g_w."""
    conv, bn, _ = ca.shared
    def shared(v):  # v: (B, C, L) -> (B, mid, L)
        y = torch.einsum("oc,bcl->bol", conv.weight[:, :, 0, 0], v) + conv.bias[None, :, None]
        y = (y - bn.running_mean[None, :, None]) / torch.sqrt(bn.running_var[None, :, None] + bn.eps)
        y = y * bn.weight[None, :, None] + bn.bias[None, :, None]
        return y * torch.clamp(y + 3, 0, 6) / 6  # h-swish
    def gate(conv1x1, v):
        return torch.sigmoid(torch.einsum("om,bml->bol", conv1x1.weight[:, :, 0, 0], v) + conv1x1.bias[None, :, None])
    row_means = x.mean(dim=3)          # (B, C, H): each row averaged over its width
    col_means = x.mean(dim=2)          # (B, C, W)
    g_h = gate(ca.along_h, shared(row_means))   # (B, C, H)
    g_w = gate(ca.along_w, shared(col_means))   # (B, C, W)
    return x * g_h[:, :, :, None] * g_w[:, :, None, :]


def test_coordinate_attention_is_the_product_of_its_two_axis_gates():
    ca = _randomised(CoordinateAttention(16))
    x = torch.randn(2, 16, 7, 5)
    with torch.no_grad():
        torch.testing.assert_close(ca(x), _coordinate_attention_by_hand(ca, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", ["row", "column"])
def test_a_bright_line_changes_the_gate_along_its_own_axis_only(axis):
    """With one bright row, the H gate differs between that row and the others while the W
    gate is the same for every column (every column holds one bright pixel); and the other way
    round for one bright column."""
    ca = _randomised(CoordinateAttention(16))
    x = torch.ones(1, 16, 6, 6)
    if axis == "row":
        x[:, :, 2, :] = 5.0
    else:
        x[:, :, :, 2] = 5.0
    with torch.no_grad():
        gate = ca(x) / x   # g_h * g_w at every pixel, per channel
    along_rows = gate[0, :, :, 0]       # varies with the row index when the H gate differs
    along_cols = gate[0, :, 0, :]       # varies with the column index when the W gate differs
    bright, plain = (along_rows, along_cols) if axis == "row" else (along_cols, along_rows)
    assert (bright[:, 2] - bright[:, 0]).abs().max() > 1e-3        # the bright line's gate differs
    torch.testing.assert_close(bright[:, 0], bright[:, 4])          # the other lines' gates agree
    torch.testing.assert_close(plain, plain[:, :1].expand_as(plain))  # the other axis: one gate for all


# ---- multi-scale fusion -----------------------------------------------------------------------

def test_fusion_mixes_the_downsampled_texture_and_the_semantic_map_by_the_softmax_weights():
    fusion = _randomised(MultiScaleFusion(8, 12))
    with torch.no_grad():
        fusion.mix.copy_(torch.tensor([0.3, -0.4]))
    texture, semantic = torch.randn(2, 8, 10, 10), torch.randn(2, 12, 5, 5)
    w = torch.softmax(torch.tensor([0.3, -0.4]), 0)
    with torch.no_grad():
        t = F.avg_pool2d(fusion.texture(texture), 2, stride=2, ceil_mode=True)
        s = fusion.semantic(semantic)
        expected = F.conv2d(w[0] * t + w[1] * s, fusion.lift.weight)
        torch.testing.assert_close(fusion(texture, semantic), expected)


def test_fusion_output_depends_on_the_texture_map_as_much_as_its_weight_says():
    fusion = _randomised(MultiScaleFusion(8, 12))
    semantic = torch.randn(1, 12, 5, 5)
    a, b = torch.randn(1, 8, 10, 10), torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        fusion.mix.copy_(torch.tensor([0.0, 0.0]))  # equal weights
        changed = (fusion(a, semantic) - fusion(b, semantic)).abs().mean()
        assert changed > 1e-2  # a different texture gives a different output
        fusion.mix.copy_(torch.tensor([-30.0, 30.0]))  # texture weight ~1e-26
        torch.testing.assert_close(fusion(a, semantic), fusion(b, semantic))


# ---- spatial pyramid pooling -----------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False])
def test_spp_concatenates_the_map_with_its_5_9_13_max_pools(fast):
    spp = _randomised(SpatialPyramidPooling(4, fast=fast))
    x = torch.randn(2, 4, 9, 11)
    pools = [F.max_pool2d(x, 5, 1, 2), F.max_pool2d(x, 9, 1, 4), F.max_pool2d(x, 13, 1, 6)]
    levels = spp.pyramid(x)
    assert len(levels) == 4
    torch.testing.assert_close(levels[0], x)
    for level, pool in zip(levels[1:], pools):
        torch.testing.assert_close(level, pool)
    with torch.no_grad():
        y = F.conv2d(torch.cat([x] + pools, 1), spp.conv.weight)
        y = F.batch_norm(y, spp.bn.running_mean, spp.bn.running_var, spp.bn.weight, spp.bn.bias, eps=spp.bn.eps)
        torch.testing.assert_close(spp(x), F.hardswish(y))


def test_spp_pools_reach_as_far_as_their_kernels():
    """A single bright pixel spreads 2, 4 and 6 pixels in each direction in the three pools."""
    x = torch.zeros(1, 1, 15, 15)
    x[0, 0, 7, 7] = 1.0
    for fast in (True, False):
        levels = SpatialPyramidPooling(1, fast=fast).pyramid(x)
        for level, reach in zip(levels[1:], (2, 4, 6)):
            lit = level[0, 0].nonzero()
            assert lit[:, 0].min() == 7 - reach and lit[:, 0].max() == 7 + reach
            assert lit[:, 1].min() == 7 - reach and lit[:, 1].max() == 7 + reach
