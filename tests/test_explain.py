"""Class activation maps of the predicted age: the target, the methods and layers, hook hygiene,
the face-region measure and the figures of notebook 06."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

from fadenet.config import ModelConfig
from fadenet.model import normalize, to_tensor
from fadenet.explain import LAYERS, METHODS, AgeTarget, compute_cams, face_region, mass_inside, report
from fadenet.explain.cam import SignedEigenCAM, region_mask
from fadenet.model import AgeNet, build_model

SIZE = 64
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(pretrained="none")).eval()


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)


def test_age_target_is_the_expected_age_with_a_gradient():
    logits = torch.full((81,), -20.0)
    logits[30] = logits[31] = 20.0
    assert AgeTarget()(logits).item() == pytest.approx(30.5, abs=1e-3)
    logits = torch.randn(81, requires_grad=True)
    AgeTarget()(logits).backward()
    assert logits.grad.abs().sum() > 0
    # more weight on older ages raises the target: the gradient grows with the age
    assert logits.grad[80] > logits.grad[0]


def test_the_target_gradient_reaches_the_input_through_the_network(model, faces):
    x = normalize(to_tensor(faces[:1])).requires_grad_(True)
    AgeTarget()(model(x)[0]).backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("layer", LAYERS)
def test_every_method_and_layer_gives_maps_of_the_image_size(model, faces, method, layer):
    cams = compute_cams(model, faces, method, layer, batch_size=2)
    assert cams.shape == (len(faces), SIZE, SIZE) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6


def test_maps_follow_the_input_size(model):
    big = np.random.default_rng(1).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    assert compute_cams(model, big, "gradcam", "fusion").shape == (2, 96, 96)


@pytest.mark.parametrize("layer", LAYERS)
def test_the_target_has_a_gradient_at_every_cam_layer(model, faces, layer):
    captured = []
    handle = model.cam_layers()[layer].register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        output = model(normalize(to_tensor(faces[:1])))
        captured[0].retain_grad()
        AgeTarget()(output[0]).backward()
    finally:
        handle.remove()
    assert captured[0].grad is not None and captured[0].grad.abs().sum() > 0


def test_methods_differ_and_depend_on_the_image(model, faces):
    grad = compute_cams(model, faces, "gradcam", "fusion")
    eigen = compute_cams(model, faces, "eigencam", "fusion")
    assert not np.allclose(grad, eigen)
    assert not np.allclose(grad[0], grad[1])


def test_hooks_are_released_and_the_training_mode_is_restored(model, faces):
    model.train()
    try:
        compute_cams(model, faces[:1], "gradcam++", "attention")
        assert model.training
        assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    finally:
        model.eval()


def test_unknown_method_or_layer_names_the_choices(model, faces):
    with pytest.raises(ValueError, match="gradcam, gradcam\\+\\+, eigencam"):
        compute_cams(model, faces, "scorecam")
    baseline = build_model(ModelConfig(arch="baseline", pretrained="none"))
    with pytest.raises(ValueError, match="'fusion' is not one of attention, spp"):
        compute_cams(baseline, faces, "gradcam", "fusion")


def test_fast_eigen_projection_matches_the_package(model):
    activations = np.random.default_rng(2).normal(size=(4, 96, 4, 4)).astype(np.float32)
    ours = SignedEigenCAM(model, [model.cam_layers()["spp"]])
    try:
        mine = ours.get_cam_image(None, None, None, activations, None, False)
    finally:
        ours.__exit__(None, None, None)
    reference = get_2d_projection_with_sign_correction(activations)
    np.testing.assert_allclose(mine, reference, atol=1e-4 * np.abs(reference).max())


def test_mass_inside_the_face_region():
    mask = region_mask(40, face_region()).astype(np.float32)
    x0, y0, x1, y1 = face_region()
    cams = np.stack([mask, np.ones((40, 40), np.float32), 1 - mask, np.zeros((40, 40), np.float32)])
    share = mass_inside(cams)
    assert share[0] == pytest.approx(1.0)
    assert share[1] == pytest.approx((x1 - x0) * (y1 - y0), abs=0.03)
    assert share[2] == pytest.approx(0.0)
    assert np.isnan(share[3])


def test_pick_faces_takes_a_few_of_each_age_group_reproducibly():
    ages = np.repeat(np.arange(0, 80, 5), 4)
    rows = np.arange(len(ages))
    table = report.pick_faces(ages, rows, per_group=3)
    assert table.groupby("group").size().max() <= 3
    assert set(table["group"]) == {"0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-80"}
    assert table["age"].is_monotonic_increasing
    assert table.equals(report.pick_faces(ages, rows, per_group=3))


def test_notebook_figures_and_table(model, faces):
    table = report.pick_faces(np.array([5, 35, 75]), np.arange(3), per_group=1).assign(predicted=[30.0, 31.0, 32.0])
    images = faces[table["row"]]
    baseline = build_model(ModelConfig(arch="baseline", pretrained="none")).eval()
    models = {"FADE-Net": model, "baseline": baseline}
    sets = report.cam_sets(models, images, {"FADE-Net": ["spp", "fusion"], "baseline": ["spp"]}, ["gradcam"])
    mass = report.face_mass_table(sets, models)
    assert list(mass["module"]) == ["spp.act", "fusion.lift", "backbone.16"]
    assert (mass["faces"] == 3).all()
    share = mass["mass in face region"]
    assert (share.between(0, 1) | (share.isna() & (mass["empty maps"] == 3))).all()
    figures = [
        report.age_group_figure(images, sets[("FADE-Net", "spp", "gradcam")], table),
        report.methods_layers_figure(images, sets, "FADE-Net", table),
        report.mean_cam_figure(images, sets, table["group"].to_numpy(), list(sets)),
        report.comparison_figure(images, {"a": sets[("FADE-Net", "spp", "gradcam")]}, {"a": table["predicted"]},
                                 table["age"].to_numpy()),
    ]
    assert [len(f.axes) for f in figures] == [3, 3 * 3, 3 * 3, 2 * 3]
    for fig in figures:
        plt.close(fig)


class _RegionOnly(nn.Module):
    """Keeps the activations inside one rectangle of the map (rows r0:r1, columns c0:c1)."""

    def __init__(self, size: int, rows: tuple[int, int], cols: tuple[int, int]):
        super().__init__()
        mask = torch.zeros(1, 1, size, size)
        mask[..., rows[0]:rows[1], cols[0]:cols[1]] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return x * self.mask


def _network_that_sees_one_region() -> AgeNet:
    """An AgeNet whose predicted age depends on the image only through one off-centre,
    non-square region: positive 1x1-stride-4 features, masked to rows 2-6 and columns 9-14 of
    the 16x16 map (pixels 8-28 down, 36-60 across at 64 px), and a head whose age grows with
    every feature."""
    conv = nn.Conv2d(3, 4, 4, stride=4)
    with torch.no_grad():
        conv.weight.fill_(0.05)
        conv.bias.fill_(0.1)
    backbone = nn.Sequential(conv, nn.ReLU(), _RegionOnly(SIZE // 4, (2, 7), (9, 15)))
    head = nn.Linear(4, 81)
    with torch.no_grad():
        head.weight.copy_(torch.linspace(-1, 1, 81)[:, None].expand(81, 4))
        head.bias.zero_()
    return AgeNet(backbone, nn.Sequential(head), {"arch": "test", "backbone": "test", "pretrained": "random"}).eval()


@pytest.mark.parametrize("method", list(METHODS))
def test_a_cam_lights_the_region_the_prediction_depends_on(method):
    model = _network_that_sees_one_region()
    images = np.full((3, SIZE, SIZE, 3), 255, np.uint8)
    images[1, ::2] = 128   # striped: the region still holds all the evidence
    images[2] = 0          # black, but for the region itself: a mirrored or shifted input would show nothing
    images[2, 8:28, 36:60] = 255
    cams = compute_cams(model, images, method, "attention")
    region = (36 / SIZE, 8 / SIZE, 60 / SIZE, 28 / SIZE)        # x0, y0, x1, y1 as fractions
    assert (mass_inside(cams, region) > 0.9).all()
    for cam in cams:
        y, x = np.unravel_index(cam.argmax(), cam.shape)
        assert 8 <= y < 28 and 36 <= x < 60, (y, x)


def test_chapter06_summary_compares_face_mass_with_uniform_by_standard_errors():
    import pandas as pd
    from fadenet.explain.report import chapter_summary
    table = pd.DataFrame({"model": ["FADE-Net", "FADE-Net", "baseline", "baseline"],
                          "layer": ["attention", "attention", "spp", "spp"],
                          "method": ["Grad-CAM", "Eigen-CAM", "Grad-CAM", "Grad-CAM++"],
                          "faces": [100] * 4, "empty maps": [3, 0, 0, 0],
                          "mass in face region": [0.30, 0.9, 0.42, 0.9], "std error": [0.02, 0.01, 0.01, 0.01],
                          "uniform": [0.43] * 4})
    assert chapter_summary(table).splitlines() == [
        "- FADE-Net, attention layer: 30% of the Grad-CAM mass lies on the face region (± 2.0%), less than a "
        "uniform map's 43%; 3 of 100 maps are empty.",
        "- baseline, spp layer: 42% of the Grad-CAM mass lies on the face region (± 1.0%), no different from a "
        "uniform map's 43%; 0 of 100 maps are empty."]
    empty = table.assign(**{"mass in face region": [float("nan"), 0.9, 0.42, 0.9], "empty maps": [100, 0, 0, 0]})
    assert chapter_summary(empty).splitlines()[0] == "- FADE-Net, attention layer: all 100 Grad-CAM maps are empty."
