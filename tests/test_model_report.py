"""The architecture chapter's tables and diagram, and the registry of variants."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.text import Text

from fadenet.config import ModelConfig, load_config
from fadenet.model import build_model, count_macs, report
from fadenet.variants import (ABLATION, LEAVE_ONE_OUT, VANILLA, VARIANTS, baseline_representations, build_variant,
                              macs_comparison, names, variant, variant_config, variant_table)

pytestmark = pytest.mark.usefixtures("one_thread")


def value(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.fixture(scope="module")
def variants() -> pd.DataFrame:
    return variant_table(size=64).set_index("variant")


def test_the_variant_table_has_every_variant_once(variants):
    assert list(variants.index) == [*VARIANTS, VANILLA]
    assert list(VARIANTS) == ["baseline", "+ca", "+msff", "+spp", "+dldl_v2", "fadenet", "-ca", "-msff", "-spp",
                              "-dldl_v2", "mobilenet_v3_small", "mobilenet_v2", "resnet18"]
    assert variants["parameters"].dtype.kind == "i"


def test_the_variant_table_counts_what_the_paper_and_torchvision_count(variants):
    assert variants.loc["fadenet", "parameters"] == 4_841_463
    assert variants.loc["fadenet", "overrides"] == "(none: the paper configuration)"
    assert variants.loc[VANILLA, "parameters"] == 5_483_032
    assert variants.loc["baseline", "parameters"] == 4_039_041


def test_loss_only_variants_share_the_network_and_say_the_loss_differs(variants):
    for loss_only, network in [("-dldl_v2", "fadenet"), ("+dldl_v2", "baseline")]:
        same = ["parameters", "M multiply-adds @64px"]
        assert variants.loc[loss_only, same].tolist() == variants.loc[network, same].tolist()
        assert variants.loc[loss_only, "loss"] != variants.loc[network, "loss"]
    assert variants.loc["-dldl_v2", "overrides"] == "loss.dldl_v2=false"


def test_each_ablation_variant_is_one_switch_from_the_row_it_is_compared_with():
    for name in names(ABLATION, LEAVE_ONE_OUT):
        v = variant(name)
        if name in ("baseline", "fadenet"):
            continue
        reference = variant(v.reference).settings
        changed = {k for k, x in v.settings.items() if reference[k] != x}
        assert changed == {f"{'loss' if name.endswith('dldl_v2') else 'model'}.{name[1:]}"}, name
        assert v.reference == ("baseline" if name.startswith("+") else "fadenet")
    assert variant("fadenet").reference == "baseline"
    with pytest.raises(KeyError, match="no variant 'fadenet_v9'; known: baseline"):
        variant("fadenet_v9")


def test_every_variant_overrides_any_configuration_completely():
    # applied over a profile with other switches, a variant still gives its own network
    for name in names(ABLATION, LEAVE_ONE_OUT):
        cfg = variant_config(name, load_config("smoke", "model.ca=false", "model.spp=false", "loss.dldl_v2=false"))
        assert all(value(cfg, k) == x for k, x in variant(name).settings.items()), name
    # the backbone and its weights stay the profile's: the ablation runs on the backbone that loads
    quick = variant_config("fadenet", load_config("quick")).model
    assert (quick.backbone, quick.pretrained, quick.arch) == ("auto", "auto", "fadenet")
    assert variant_config("baseline").model.backbone == "mobilenet_v3_large"  # default: the paper's
    assert build_variant("fadenet", load_config("smoke", "model.backbone=mobilenet_v2")).meta["backbone"] == "mobilenet_v2"


def test_the_baseline_is_the_same_network_written_either_way():
    counts = baseline_representations()
    assert set(counts.values()) == {4_039_041}
    torch.manual_seed(0)
    as_switches = build_variant("baseline")
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
    table = macs_comparison(size=224).set_index("model")
    measured = table["parameters, measured here"].dropna()
    assert measured.tolist() == [4_841_463, 5_483_032]
    fadenet, vanilla = table["M multiply-adds @224px, measured here"].dropna().tolist()
    assert fadenet > vanilla and 210 < vanilla < 225
    hal = table.loc["HAL-Net (FADE-Net's predecessor)"]
    assert pd.isna(hal["parameters, measured here"]) and hal["cost @224px, reported"] == "~219M 'FLOPs'"
    assert table.loc["FADE-Net (paper configuration)", "parameters, reported"] == "4.84M"


def test_part_costs_add_up_and_put_the_spp_projection_at_96m():
    model = build_variant("fadenet")
    table = report.part_costs(model, size=224)
    macs = table["M multiply-adds @224px"]
    assert macs["total"] == pytest.approx(macs.drop("total").sum(), abs=0.3)
    assert macs["total"] == round(count_macs(model, 224) / 1e6, 1)
    assert macs["spp"] == round(3840 * 512 * 7 * 7 / 1e6, 1)
    assert table.loc["total", "parameters"] == 4_841_463


def test_any_input_size_gives_81_logits_and_cost_grows_with_area():
    table = report.input_sizes(build_variant("fadenet"), sizes=(64, 96))
    assert table["logits"].tolist() == ["1x81", "1x81"]
    assert table["last map"].tolist() == ["2x2", "3x3"]
    assert table["M multiply-adds"].is_monotonic_increasing


def test_backbone_choice_says_what_is_chosen():
    assert "mobilenet_v2" in report.backbone_choice(ModelConfig(backbone="mobilenet_v2"))
    text = report.backbone_choice(ModelConfig(backbone="auto", pretrained="none"))
    assert "mobilenet_v3_large" in text and "random" in text


def test_summary_command_resolves_the_backbone_as_training_does(capsys, monkeypatch):
    from fadenet import cli
    from fadenet.model import count_parameters
    import fadenet.resolve as resolve_module
    for present in ("mobilenet_v2", "mobilenet_v3_large"):
        # which ImageNet file this machine holds decides auto's backbone, for training and summary alike
        monkeypatch.setattr(resolve_module, "resolve_backbone", lambda cfg, present=present: present)
        assert cli.main(["summary", "--profile", "quick", "--size", "64"]) == 0
        total = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("total"))
        expected = count_parameters(build_model(ModelConfig(backbone=present, pretrained="none")))
        assert int(total.split()[1].replace(",", "")) == expected, present
