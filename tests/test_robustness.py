"""Corruptions, the robustness table and the fairness table on hand-computed cases."""
import numpy as np
import pandas as pd
import pytest

from fadenet.evaluation import robustness
from fadenet.evaluation.metrics import fairness_table, life_stage, predictions_table
from fadenet.evaluation.robustness import CORRUPTIONS, Corruption, corrupt, corruption_table

DARK, BRIGHT = Corruption("brightness", "-40%", -0.4), Corruption("brightness", "+40%", 0.4)
EYES, MOUTH = Corruption("black band", "over the eyes", 0), Corruption("black band", "over the mouth", 1)


def test_brightness_scales_and_clips():
    img = np.array([[[100, 200, 0]]], dtype=np.uint8)
    assert corrupt(img, DARK).tolist() == [[[60, 120, 0]]]
    assert corrupt(img, BRIGHT).tolist() == [[[140, 255, 0]]]


def test_eye_band_covers_the_eye_rows_of_a_crop():
    img = np.full((100, 100, 3), 200, np.uint8)
    out = corrupt(img, EYES)
    dark = np.where((out == 0).all(axis=(1, 2)))[0]
    assert dark.tolist() == list(range(25, 47))  # FACE_ZONES: the eyes lie between 0.25 and 0.47
    assert (out[:25] == 200).all() and (out[47:] == 200).all()
    mouth = np.where((corrupt(img, MOUTH) == 0).all(axis=(1, 2)))[0]
    assert mouth.tolist() == list(range(65, 86))


def test_band_follows_the_face_box_in_a_larger_picture():
    img = np.full((200, 300, 3), 50, np.uint8)
    out = corrupt(img, EYES, box=(150, 120, 80))  # face side 80 centred at y=120: eyes at 100..117.6
    dark = np.where((out == 0).all(axis=(1, 2)))[0]
    assert dark.tolist() == list(range(100, 118))


def test_low_resolution_averages_fine_detail_and_keeps_flat_areas():
    flat = np.full((64, 64, 3), 77, np.uint8)
    assert (corrupt(flat, Corruption("low resolution", "1/4", 4)) == 77).all()
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    out = corrupt(checker, Corruption("low resolution", "1/2", 2))
    assert np.abs(out.astype(int) - 128).max() <= 1


def test_blur_keeps_flat_areas_and_spreads_a_point():
    img = np.zeros((41, 41, 3), np.uint8)
    img[20, 20] = 255
    out = corrupt(img, Corruption("Gaussian blur", "2%", 0.05))  # sigma 2 px on a 41 px face
    assert out[20, 20, 0] < 255 and out[20, 22, 0] > 0 and out[0, 0, 0] == 0


def test_noise_has_its_strength_and_is_repeatable():
    img = np.full((200, 200, 3), 128, np.uint8)
    noisy = corrupt(img, Corruption("Gaussian noise", "10", 10), seed=3)
    assert abs(float(noisy.astype(float).std()) - 10) < 0.3
    assert (noisy == corrupt(img, Corruption("Gaussian noise", "10", 10), seed=3)).all()


def test_stronger_jpeg_loses_more():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    err = [np.abs(corrupt(img, c).astype(int) - img).mean() for c in CORRUPTIONS[:2]]
    assert 0 < err[0] < err[1]


def test_every_corruption_keeps_shape_and_type():
    img = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    for c in CORRUPTIONS:
        out = corrupt(img, c)
        assert out.shape == img.shape and out.dtype == np.uint8


def test_corruption_table_on_a_brightness_reading_model():
    # a "model" that reads age off the mean brightness: age = mean pixel / 2
    images = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (40, 80, 120, 160)])
    ages = np.array([20.0, 40.0, 60.0, 80.0])
    table = corruption_table(lambda crops: crops.reshape(len(crops), -1).mean(1) / 2, images, ages,
                             corruptions=(DARK,), resamples=500)
    clean, dark = table.iloc[0], table.iloc[1]
    assert clean["MAE"] == pytest.approx(0.0) and clean["verdict"] == "reference"
    assert dark["MAE"] == pytest.approx(0.4 * ages.mean())  # every prediction 40% low
    assert dark["mean error"] == pytest.approx(-0.4 * ages.mean())
    assert dark["MAE change"] == pytest.approx(20.0)
    assert dark["95% low"] > 0 and dark["verdict"] == "raises MAE by 20.00 years"
    assert dark["CS@5"] == 0.0 and clean["CS@5"] == 1.0


def test_strongest_picks_the_largest_rises():
    table = pd.DataFrame({"corruption": ["none", "brightness", "brightness", "black band"],
                          "strength": ["clean", "-40%", "+40%", "over the eyes"], "MAE change": [0, 0.5, 0.1, 2.0]})
    assert robustness.strongest(table, 2) == [EYES, DARK]


def test_life_stages():
    assert life_stage([0, 12, 13, 19, 20, 39, 40, 59, 60, 80]).astype(str).tolist() == \
        ["0-12", "0-12", "13-19", "13-19", "20-39", "20-39", "40-59", "40-59", "60+", "60+"]


def test_fairness_table_by_hand():
    probs = np.zeros((4, 81))
    probs[[0, 1, 2, 3], [12, 30, 25, 70]] = 1.0  # predicted ages
    table = predictions_table(probs, np.array([10, 30, 30, 65]))
    fair = fairness_table(table, ["female", "female", "male", "male"], resamples=200).set_index(["gender", "ages"])
    assert fair.loc[("female", "0-12"), "MAE"] == 2 and fair.loc[("female", "0-12"), "bias"] == 2
    assert fair.loc[("female", "all"), "MAE"] == 1 and fair.loc[("female", "all"), "CS@5"] == 1
    assert fair.loc[("male", "20-39"), "bias"] == -5 and fair.loc[("male", "60+"), "bias"] == 5
    assert fair.loc[("male", "all"), "bias"] == 0 and fair.loc[("male", "all"), "MAE"] == 5
    one = fair.loc[("male", "60+")]  # one face: the interval is the value itself
    assert one["MAE low"] == one["MAE high"] == 5
    assert ("female", "60+") not in fair.index  # empty cells are left out
