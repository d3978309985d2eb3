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
