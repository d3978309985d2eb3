"""Intervals of predicted age distributions, their coverage and the calibrating temperature."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fadenet.evaluation import calibration
from fadenet.evaluation.calibration import central_interval, coverage, fit_temperature, temper

AGES = np.arange(81)


def gaussians(means: np.ndarray, std: float) -> np.ndarray:
    p = np.exp(-0.5 * ((AGES[None] - means[:, None]) / std) ** 2)
    return p / p.sum(1, keepdims=True)


def test_central_interval_by_hand():
    probs = np.zeros((2, 81))
    probs[0, [20, 30]] = 0.5           # half at 20, half at 30
    probs[1, [10, 11, 12, 13]] = 0.25  # four equal ages
    low, high = central_interval(probs, 0.9)
    assert low.tolist() == [20, 10] and high.tolist() == [30, 13]
    low, high = central_interval(probs, 0.5)  # cumulative 0.25 is reached at 10, 0.75 at 12
    assert low.tolist() == [20, 10] and high.tolist() == [30, 12]
    assert coverage(probs, np.array([30, 14]), 0.9) == 0.5


def test_temperature_one_changes_nothing_and_lower_sharpens():
    probs = gaussians(np.array([40.0]), 6.0)
    np.testing.assert_allclose(temper(probs, 1.0), probs, atol=1e-12)
    # a Gaussian to the power 1/t is a Gaussian with its spread times sqrt(t)
    np.testing.assert_allclose(temper(probs, 0.25), gaussians(np.array([40.0]), 3.0), atol=1e-9)


def test_the_fitted_temperature_undoes_an_over_wide_distribution():
    rng = np.random.default_rng(0)
    centres = rng.uniform(20, 60, 4000)
    ages = np.clip(np.round(centres + rng.normal(0, 4.0, len(centres))), 0, 80).astype(int)
    too_wide = gaussians(centres, 6.0)  # the truth spreads 4 years; the model says 6
    raw = coverage(too_wide, ages, 0.9)
    t = fit_temperature(too_wide, ages)
    assert t == pytest.approx((4.0 / 6.0) ** 2, rel=0.08)
    assert raw > 0.97  # over-wide: nearly every age inside
    assert coverage(temper(too_wide, t), ages, 0.9) == pytest.approx(0.9, abs=0.025)
    # whole ages at both ends: an interval of a few years holds a little more than its share
    assert 0.5 <= coverage(temper(too_wide, t), ages, 0.5) <= 0.6


def test_saved_temperature_reads_back_and_bad_files_are_none(tmp_path):
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    assert calibration.saved_temperature(checkpoint) is None
    target = checkpoint.with_name(calibration.CALIBRATION_FILE)
    target.write_text(json.dumps({"temperature": 0.8}))
    assert calibration.saved_temperature(checkpoint) == 0.8
    for bad in ("{", json.dumps({"temperature": -1}), json.dumps({"t": 1}), json.dumps({"temperature": "x"})):
        target.write_text(bad)
        assert calibration.saved_temperature(checkpoint) is None


def two_point(means: np.ndarray) -> np.ndarray:
    """Half the mass one year below each mean, half one year above: mean as given, std exactly 1."""
    probs = np.zeros((len(means), 81))
    probs[np.arange(len(means)), means - 1] = 0.5
    probs[np.arange(len(means)), means + 1] += 0.5
    return probs


def test_conformal_scale_and_interval_by_hand():
    probs = two_point(np.full(9, 40))
    ages = 40 + np.array([3, -1, 0, 8, -5, 2, 7, -4, 6])  # scores |age - 40| / 1: 0..8 once each
    # (n + 1) * mass = 5 -> the 5th smallest score; 9 -> the 9th; 9.5 -> a 10th that 9 faces lack
    assert calibration.conformal_scale(probs, ages, 0.5) == 4.0
    assert calibration.conformal_scale(probs, ages, 0.9) == 8.0
    assert calibration.conformal_scale(probs, ages, 0.95) == np.inf
    low, high = calibration.conformal_interval(two_point(np.array([30, 1, 79])), 2.5)
    assert low.tolist() == [28, 0, 77] and high.tolist() == [32, 3, 80]  # 30 +- 2.5 -> 28..32, clipped to 0..80


def age_dependent_errors(n: int, seed: int):
    """A network whose error grows with age while its predicted spread stays 3 years."""
    rng = np.random.default_rng(seed)
    ages = rng.integers(2, 80, n)
    means = np.clip(ages + rng.normal(0, 1 + ages / 10), 1, 79)
    return gaussians(means, 3.0), ages, np.where(rng.random(n) < 0.5, "female", "male")


def test_conformal_intervals_hold_on_new_faces_and_win_where_error_grows_with_age():
    val, test = age_dependent_errors(3000, 0), age_dependent_errors(3000, 1)
    temperature = fit_temperature(*val[:2])
    scales = {m: calibration.conformal_scale(*val[:2], m) for m in calibration.MASSES}
    table = calibration.coverage_by_group({"val": val, "test": test}, temperature, scales, resamples=200)
    cell = table.set_index(["split", "method", "group"])
    for mass in calibration.MASSES:  # the guarantee: on faces it never saw, coverage near the mass
        assert abs(cell.loc[("test", "conformal", "all"), f"{mass:.0%}"] - mass) < 0.03
    # neither fixes the old (a spread that should grow with age), but by life stage conformal is closer
    gap = cell.xs("val", level="split").groupby(level="method")["stage gap"].first()
    assert gap["conformal"] < gap["temperature"]
    assert cell.loc[("test", "conformal", "60+"), "90%"] < 0.9 < cell.loc[("test", "conformal", "0-12"), "90%"]
    assert set(table["group"]) == {"all", *calibration.LIFE_STAGES, "female", "male"}


def test_saved_conformal_is_read_only_where_calibrate_chose_it(tmp_path):
    checkpoint = tmp_path / "best.pt"
    path = tmp_path / calibration.CALIBRATION_FILE
    path.write_text(json.dumps({"temperature": 1.2, "interval": "conformal", "conformal": {"0.5": 0.7, "0.9": 1.9}}))
    assert calibration.saved_conformal(checkpoint) == {0.5: 0.7, 0.9: 1.9}
    path.write_text(json.dumps({"temperature": 1.2, "interval": "temperature", "conformal": {"0.5": 0.7, "0.9": 1.9}}))
    assert calibration.saved_conformal(checkpoint) is None
    path.write_text(json.dumps({"temperature": 1.2, "interval": "conformal", "conformal": {"0.5": 0.7}}))
    assert calibration.saved_conformal(checkpoint) is None


def test_a_prediction_reports_the_conformal_interval_when_it_has_one():
    from fadenet.explore.predictor import FacePrediction, whole_picture
    crop = np.zeros((8, 8, 3), np.uint8)
    probs = two_point(np.array([30]))[0]
    plain = FacePrediction(whole_picture(crop), True, crop, probs, temperature=1.0)
    assert plain.interval(0.9) == (29, 31)  # the distribution's own central 90%
    conformal = FacePrediction(whole_picture(crop), True, crop, probs, 1.0, {0.5: 1.5, 0.9: 4.2})
    assert conformal.interval(0.9) == (26, 34) and conformal.interval(0.5) == (29, 31)
