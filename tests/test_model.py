"""The networks, their ImageNet weights and their size/cost summaries."""
from __future__ import annotations

import itertools
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from fadenet.config import ConfigError, ModelConfig
from fadenet.model import (CoordinateAttention, RandomInitWarning, SpatialPyramidPooling,
                           WeightsUnavailable, build_model, count_macs, format_summary,
                           parameter_table, predict, resolve_backbone, weight_file)
from fadenet.model.weights import weights_downloadable


pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(c_in: int, c_out: int, bias: bool) -> int:
    return c_in * c_out + (c_out if bias else 0)


def ca(c: int) -> int:
    mid = max(8, c // 16)
    return conv(c, mid, True) + 2 * mid + 2 * conv(mid, c, True)


def se(c: int, squeeze: int) -> int:
    return conv(c, squeeze, True) + conv(squeeze, c, True)


def head(features: int, hidden: int = 1024, classes: int = 81) -> int:
    return conv(features, hidden, True) + conv(hidden, classes, True)


def paper(**changes) -> ModelConfig:
    return ModelConfig(pretrained="none", **changes)


@pytest.fixture(scope="module")
def fadenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model(paper()).eval()


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


# ---- size ---------------------------------------------------------------------------------

def test_paper_configuration_has_exactly_4841463_parameters(fadenet):
    assert n_params(fadenet) == 4_841_463


# Each switch removes or restores exactly its own modules (torchvision's SE squeezes C/4).
ABLATION_DELTAS = {
    "ca": 2 * (se(672, 168) - ca(672)) + 2 * (se(960, 240) - ca(960)),          # +855,180
    "msff": -(conv(40, 64, False) + 2 * 64 + conv(112, 64, False) + 2 * 64 + 2
              + conv(64, 128, False)) - 128 * 1024,                               # -149,250
    "spp": -(conv(4 * 960, 512, False) + 2 * 512) + head(960 + 128) - head(512 + 128),  # -1,508,352
}


@pytest.mark.parametrize("switch", sorted(ABLATION_DELTAS))
def test_each_ablation_switch_changes_the_count_by_its_own_modules(switch, fadenet):
    ablated = build_model(paper(**{switch: False}))
    assert n_params(ablated) - n_params(fadenet) == ABLATION_DELTAS[switch]


@pytest.mark.parametrize("ca_on,msff_on,spp_on", list(itertools.product([True, False], repeat=3)))
def test_every_ablation_combination_builds_trains_and_predicts(ca_on, msff_on, spp_on):
    """Each switched-on block is on the path from image to age: its every parameter gets a
    gradient (a block built but bypassed would get none); a switched-off block is absent."""
    model = build_model(paper(ca=ca_on, msff=msff_on, spp=spp_on))
    logits = model(torch.randn(2, 3, 64, 64))
    logits.sum().backward()
    assert logits.shape == (2, 81)
    attention = [m for m in model.modules() if isinstance(m, CoordinateAttention)]
    assert len(attention) == (4 if ca_on else 0)
    assert (model.fusion is not None) == msff_on and (model.spp is not None) == spp_on
    blocks = attention + [b for b in (model.fusion, model.spp, model.head) if b is not None]
    for block in blocks:
        for name, p in block.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (type(block).__name__, name)


def test_baseline_is_mobilenet_v3_large_features_with_gap_and_the_head():
    features = n_params(torchvision.models.mobilenet_v3_large().features)
    assert n_params(build_model(paper(arch="baseline"))) == features + head(960)


# ---- forward ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [64, 100, 160, 224, 320])
@pytest.mark.parametrize("batch", [1, 2])
def test_any_input_size_gives_81_logits(fadenet, size, batch):
    with torch.no_grad():
        assert fadenet(torch.randn(batch, 3, size, size)).shape == (batch, 81)


def test_fast_spp_is_bit_identical_to_the_parallel_pools(fadenet):
    parallel = build_model(paper(fast_spp=False)).eval()
    parallel.load_state_dict(fadenet.state_dict())
    x = torch.randn(2, 3, 100, 100)
    with torch.no_grad():
        assert torch.equal(parallel(x), fadenet(x))
    fast, slow = SpatialPyramidPooling(4, fast=True), SpatialPyramidPooling(4, fast=False)
    for shape in [(1, 4, 2, 2), (2, 4, 3, 5), (1, 4, 11, 13)]:   # maps smaller and larger than 13
        x = torch.randn(shape)
        for a, b in zip(fast.pyramid(x), slow.pyramid(x), strict=True):
            assert torch.equal(a, b)


def test_predict_gives_the_distribution_and_its_expectation():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]))
    probs, age = predict(logits)
    torch.testing.assert_close(probs, torch.exp(logits))
    torch.testing.assert_close(age, torch.tensor([0.2 + 0.6 + 1.2, 1.5]))
    peaked = torch.full((1, 81), -50.0)
    peaked[0, 30] = 50.0
    assert predict(peaked)[1].item() == pytest.approx(30.0)


@pytest.mark.slow
def test_onnx_export_with_dynamic_batch_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    model = build_model(paper())
    # Batch-norm statistics of real activations and a strong head give a peaked distribution
    # (random init alone gives a flat one, where any export would match).
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.momentum = 1.0
    with torch.no_grad():
        model(torch.randn(4, 3, 100, 100))
    nn.init.normal_(model.head[-1].weight, std=1.0)
    model.eval()
    path = tmp_path / "fadenet.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 100, 100),), path, input_names=["image"],
                      output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                      verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 100, 100)   # odd map sizes: 13 -> 7 at the fusion's pooling
        (logits,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            expected = predict(model(x))[0].numpy()
        assert expected.max() > 0.1
        np.testing.assert_allclose(predict(torch.from_numpy(logits))[0].numpy(), expected, atol=1e-4)


def test_feature_shapes_follow_the_strides_and_leave_the_model_untouched():
    model = build_model(paper())
    before = model.backbone[0][1].running_mean.clone()
    shapes = dict(model.feature_shapes(torch.randn(1, 3, 100, 100)))
    assert model.training and torch.equal(model.backbone[0][1].running_mean, before)
    assert shapes["backbone.6"] == (1, 40, 13, 13) and shapes["backbone.12"] == (1, 112, 7, 7)
    assert shapes["backbone.16"] == (1, 960, 4, 4)
    assert shapes["fusion"] == (1, 128, 7, 7) and shapes["spp"] == (1, 512, 4, 4)
    assert shapes["pooled"] == (1, 640) and shapes["logits"] == (1, 81)


@pytest.mark.parametrize("changes,keys", [({}, {"attention", "spp", "fusion"}),
                                          ({"msff": False, "spp": False}, {"attention", "spp"})])
def test_cam_layers_give_the_maps_grad_cam_needs(changes, keys):
    model = build_model(paper(**changes)).eval()
    layers = model.cam_layers()
    assert set(layers) == keys
    assert isinstance(layers["attention"], CoordinateAttention)
    channels = {}
    for name, layer in layers.items():
        layer.register_forward_hook(lambda m, i, out, name=name: channels.__setitem__(name, out.shape[1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    expected = {"attention": 960, "spp": 512 if model.spp else 960, "fusion": 128}
    assert channels == {k: expected[k] for k in keys}


# ---- backbones ----------------------------------------------------------------------------

@pytest.mark.parametrize("backbone,channels", [("mobilenet_v3_large", 960), ("mobilenet_v3_small", 576),
                                               ("mobilenet_v2", 1280), ("resnet18", 512)])
def test_baselines_build_for_all_four_backbones(backbone, channels):
    model = build_model(paper(arch="baseline", backbone=backbone)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 81)
    assert n_params(model) == n_params(model.backbone) + head(channels)


def test_fadenet_on_mobilenet_v2_adds_attention_to_its_last_four_blocks():
    model = build_model(paper(backbone="mobilenet_v2"))
    with_ca = [i for i, block in enumerate(model.backbone)
               if any(isinstance(m, CoordinateAttention) for m in block.modules())]
    assert with_ca == [14, 15, 16, 17]
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 81)


@pytest.mark.parametrize("changes", [{"backbone": "resnet18"}, {"backbone": "mobilenet_v3_small"},
                                     {"backbone": "auto"}])
def test_unsupported_choices_raise_a_config_error_naming_them(changes):
    with pytest.raises(ConfigError, match=changes["backbone"]):
        build_model(paper(**changes))


# ---- weights ------------------------------------------------------------------------------

def skip_if_online():
    if weights_downloadable("mobilenet_v3_large"):
        pytest.skip("this machine can download the ImageNet weights, so nothing fails")


def test_imagenet_without_the_file_fails_fast_naming_file_and_torch_home(empty_torch_home):
    skip_if_online()
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable) as error:
        build_model(ModelConfig(pretrained="imagenet"), weights=True)
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "mobilenet_v3_large-5c1a4163.pth" in message and "TORCH_HOME" in message
    assert str(empty_torch_home / "hub" / "checkpoints") in message


def test_auto_falls_back_to_random_weights_loudly(empty_torch_home):
    skip_if_online()
    with pytest.warns(RandomInitWarning, match="random"):
        model = build_model(ModelConfig(pretrained="auto"), weights=True)
    assert model.meta["pretrained"] == "random"
    assert "random weights" in model.meta["init_warning"].lower()
    assert model.pretrained_parameters() == []
    assert resolve_backbone(ModelConfig(backbone="auto")) == "mobilenet_v3_large"


def test_a_damaged_weight_file_is_rejected_with_its_hash(empty_torch_home):
    path = weight_file("mobilenet_v2")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="sha256"):
        build_model(ModelConfig(backbone="mobilenet_v2", pretrained="imagenet"), weights=True)


def test_mobilenet_v2_loads_imagenet_weights_into_shifted_blocks(mbv2_torch_home):
    model = build_model(ModelConfig(backbone="mobilenet_v2", pretrained="imagenet"), weights=True)
    state = torch.load(weight_file("mobilenet_v2"), weights_only=True)
    block = model.backbone[14].conv   # expand, depthwise, CA (new), project conv, project BN
    assert torch.equal(block[1][0].weight, state["features.14.conv.1.0.weight"])
    assert torch.equal(block[3].weight, state["features.14.conv.2.weight"])
    assert torch.equal(block[4].running_var, state["features.14.conv.3.running_var"])
    assert model.meta == {"arch": "fadenet", "backbone": "mobilenet_v2", "pretrained": "imagenet",
                          "init_warning": ""}
    pretrained = model.pretrained_parameters()
    assert sum(p.numel() for p in pretrained) == n_params(torchvision.models.mobilenet_v2().features)
    ca_ids = {id(p) for m in model.backbone.modules() if isinstance(m, CoordinateAttention)
              for p in m.parameters()}
    assert ca_ids and not ca_ids & {id(p) for p in pretrained}


def test_without_the_weights_flag_nothing_is_loaded_whatever_the_config_asks(empty_torch_home):
    # sizes, costs and checkpoints need no ImageNet file: none is looked for, none is warned about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_model(ModelConfig(pretrained="imagenet"))
    assert model.meta["pretrained"] == "random" and model.meta["init_warning"] == ""


def test_auto_backbone_picks_mobilenet_v2_when_only_its_weights_exist(mbv2_torch_home):
    skip_if_online()
    assert resolve_backbone(ModelConfig(backbone="auto")) == "mobilenet_v2"
    assert resolve_backbone(ModelConfig(backbone="auto", pretrained="none")) == "mobilenet_v3_large"


# ---- summary ------------------------------------------------------------------------------

def test_parameter_table_splits_the_total_into_the_parts(fadenet):
    table = parameter_table(fadenet)["parameters"]
    assert table["total"] == n_params(fadenet) == table.drop("total").sum()
    kept_se = se(72, 24) + 2 * se(120, 32) + se(480, 120)   # blocks 4, 5, 6 and 11 keep SE
    assert table["attention"] == 2 * ca(672) + 2 * ca(960) + kept_se
    assert table["spp"] == conv(4 * 960, 512, False) + 2 * 512
    assert table["head"] == head(640)
    assert "4,841,463" in format_summary(fadenet, size=64)


def test_count_macs_matches_the_published_mobilenet_v3_large_cost(fadenet):
    vanilla = torchvision.models.mobilenet_v3_large()
    assert 210e6 <= count_macs(vanilla) <= 225e6
    assert count_macs(fadenet) > count_macs(build_model(paper(arch="baseline")))
