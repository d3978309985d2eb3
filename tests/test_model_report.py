"""The architecture chapter's tables and diagram, and the variants the ablation trains."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text

from fadenet.config import ModelConfig, load_config
from fadenet.model import build_model, count_macs, report

pytestmark = pytest.mark.usefixtures("one_thread")


def value(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.fixture(scope="module")
def variants() -> pd.DataFrame:
    return report.variant_table(size=64).set_index("variant")


def test_the_variant_table_has_every_variant_once(variants):
    expected = [*report.ABLATION_VARIANTS, *report.LEAVE_ONE_OUT, *report.BACKBONE_BASELINES, report.VANILLA]
    assert list(variants.index) == expected
    assert {"baseline", "+ca", "+msff", "+spp", "+dldl_v2", "fadenet", "fadenet_mbv2"} <= set(variants.index)
    assert variants["parameters"].dtype.kind == "i"


def test_the_variant_table_counts_what_the_paper_and_torchvision_count(variants):
    assert variants.loc["fadenet", "parameters"] == 4_841_463
    assert variants.loc["fadenet", "overrides"] == "(none: the paper configuration)"
    assert variants.loc[report.VANILLA, "parameters"] == 5_483_032
    assert variants.loc["baseline", "parameters"] == 4_039_041


def test_loss_only_variants_share_the_network_and_say_the_loss_differs(variants):
    for loss_only, network in [("-dldl_v2", "fadenet"), ("+dldl_v2", "baseline")]:
        same = ["parameters", "M multiply-adds @64px"]
        assert variants.loc[loss_only, same].tolist() == variants.loc[network, same].tolist()
        assert variants.loc[loss_only, "loss"] != variants.loc[network, "loss"]
    assert variants.loc["-dldl_v2", "overrides"] == "loss.dldl_v2=false"


def test_additive_variants_differ_from_the_baseline_in_one_switch():
    baseline = report.ABLATION_VARIANTS["baseline"]
    for name in ("+ca", "+msff", "+spp", "+dldl_v2"):
        changed = {k for k, v in report.ABLATION_VARIANTS[name].items() if baseline[k] != v}
        assert changed == {f"{'loss' if name == '+dldl_v2' else 'model'}.{name[1:]}"}


def test_every_variant_overrides_any_configuration_completely():
    # applied over a profile with other switches, a variant still gives its own network
    for name, overrides in {**report.ABLATION_VARIANTS, **report.LEAVE_ONE_OUT}.items():
        cfg = load_config("smoke", "model.ca=false", "model.spp=false", "loss.dldl_v2=false", overrides)
        assert all(value(cfg, k) == v for k, v in overrides.items()), name
    mbv2 = load_config("quick", report.ABLATION_VARIANTS["fadenet_mbv2"]).model
    assert (mbv2.backbone, mbv2.pretrained, mbv2.arch) == ("mobilenet_v2", "auto", "fadenet")
    smoke = load_config("smoke", report.ABLATION_VARIANTS["fadenet_mbv2"]).model
    assert smoke.pretrained == "none", "the variant follows the profile's weights policy"


def test_the_baseline_is_the_same_network_written_either_way():
    counts = report.baseline_representations()
    assert set(counts.values()) == {4_039_041}
    torch.manual_seed(0)
    as_switches = build_model(report.variant_config(report.ABLATION_VARIANTS["baseline"]).model)
    torch.manual_seed(0)
    as_arch = build_model(ModelConfig(arch="baseline", pretrained="none"))
    a, b = as_switches.state_dict(), as_arch.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_feature_shapes_mark_strides_taps_attention_and_the_spp_input():
    table = report.feature_shape_table(ModelConfig(backbone="auto", pretrained="none"), 224).set_index("layer")
    blocks = table.loc[[f"backbone.{i}" for i in range(17)]]
    assert sorted(set(blocks["stride"])) == [2, 4, 8, 16, 32]
    assert blocks["stride"].is_monotonic_increasing
    assert table.loc["backbone.6", ["channels", "stride", "role"]].tolist() == [40, 8, "texture tap -> fusion"]
    assert table.loc["backbone.12", ["channels", "stride", "role"]].tolist() == [112, 16, "semantic tap -> fusion"]
    assert table.loc["backbone.16", ["channels", "map", "role"]].tolist() == [960, "7x7", "SPP input"]
    assert list(blocks.index[blocks["attention"] == "CA"]) == [f"backbone.{i}" for i in (12, 13, 14, 15)]
    assert list(blocks.index[blocks["attention"] == "SE"]) == [f"backbone.{i}" for i in (4, 5, 6, 11)]
    assert table.loc["pooled", "channels"] == 640 and table.loc["logits", "channels"] == 81


def test_feature_shapes_of_a_baseline_have_no_taps():
    table = report.feature_shape_table(ModelConfig(arch="baseline", backbone="resnet18", pretrained="none"), 64)
    assert not table["role"].str.contains("tap").any()
    assert table.set_index("layer").loc["backbone.layer4", "role"] == "global average pooling input"


def test_the_diagram_is_a_figure_naming_every_part():
    fig = report.draw_architecture()
    try:
        assert isinstance(fig, Figure)
        texts = " ".join(t.get_text() for t in fig.findobj(Text))
        for label in ["224 × 224", "block 12 (CA)", "blocks 13-15 (CA)", "texture (block 6)",
                      "semantic (block 12)", "avg-pool 2×2", "softmax-weighted", "64 → 128",
                      "3840 ch", "5×5", "1×1 conv 3840 → 512", "GAP → 512-d", "512 + 128 = 640",
                      "Linear 640 → 1024", "hardswish", "dropout 0.35", "Linear 1024 → 81",
                      "expected age", "960 ch, s32"]:
            assert label in texts, label
    finally:
        plt.close(fig)


def test_cost_comparison_keeps_measured_and_reported_apart():
    table = report.macs_comparison(size=224).set_index("model")
    measured = table["parameters, measured here"].dropna()
    assert measured.tolist() == [4_841_463, 5_483_032]
    fadenet, vanilla = table["M multiply-adds @224px, measured here"].dropna().tolist()
    assert fadenet > vanilla and 210 < vanilla < 225
    hal = table.loc["HAL-Net (FADE-Net's predecessor)"]
    assert pd.isna(hal["parameters, measured here"]) and hal["cost @224px, reported"] == "~219M 'FLOPs'"
    assert table.loc["FADE-Net (paper configuration)", "parameters, reported"] == "4.84M"


def test_part_costs_add_up_and_put_the_spp_projection_at_96m():
    model = report.build_variant("fadenet")
    table = report.part_costs(model, size=224)
    macs = table["M multiply-adds @224px"]
    assert macs["total"] == pytest.approx(macs.drop("total").sum(), abs=0.3)
    assert macs["total"] == round(count_macs(model, 224) / 1e6, 1)
    assert macs["spp"] == round(3840 * 512 * 7 * 7 / 1e6, 1)
    assert table.loc["total", "parameters"] == 4_841_463


def test_any_input_size_gives_81_logits_and_cost_grows_with_area():
    table = report.input_sizes(report.build_variant("fadenet"), sizes=(64, 96))
    assert table["logits"].tolist() == ["1x81", "1x81"]
    assert table["last map"].tolist() == ["2x2", "3x3"]
    assert table["M multiply-adds"].is_monotonic_increasing


def test_backbone_choice_says_what_is_chosen():
    assert "mobilenet_v2" in report.backbone_choice(ModelConfig(backbone="mobilenet_v2"))
    text = report.backbone_choice(ModelConfig(backbone="auto", pretrained="none"))
    assert "mobilenet_v3_large" in text and "random" in text
