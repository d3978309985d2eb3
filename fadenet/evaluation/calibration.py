"""How far to trust a predicted age: central intervals of the predicted distribution, how often
they hold the true age (coverage), and a one-parameter temperature that makes them honest.

The network predicts a distribution over ages 0..80; its central 50% and 90% intervals are
what ``predict`` reports beside the age. They are calibrated when 50% and 90% of true ages fall
inside them. A distribution that is too narrow (over-confident) or too wide is corrected by a
temperature ``t``: ``p_t ~ p ** (1 / t)``, the same as dividing the logits by ``t``. It is
fitted on the validation split by the likelihood of the true ages, and checked on the test split.

A temperature makes the intervals right on average over all faces, not for each kind of face: a
network whose error grows with age faster than its spread does covers children too often and
the old too rarely. Split-conformal intervals are the other choice: ``mean +- q * std``, where
``q`` is the validation split's quantile of ``|true - mean| / std`` at the interval's mass (the
``ceil((n + 1) * mass)``-th smallest of the ``n`` scores), so that they hold on new faces from
the same distribution with no assumption about the network. ``calibrate`` fits both, measures
their coverage per life stage and gender, and keeps the one whose coverage per life stage is
closer to its mass on validation; ``calibration.json`` beside the checkpoint records it, and
``predict`` and the explorer report that one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from ..io import atomic_path
from .evaluate import evaluate
from .metrics import LIFE_STAGES, bootstrap_mean, life_stage

MASSES = (0.5, 0.9)
CALIBRATION_FILE = "calibration.json"


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Distributions (N, K) sharpened (t < 1) or flattened (t > 1): ``softmax(log p / t)``."""
    logp = np.log(np.clip(probs, 1e-12, None)) / temperature
    logp -= logp.max(axis=-1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=-1, keepdims=True)


def central_interval(probs: np.ndarray, mass: float) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest age (inclusive) of the central ``mass`` of each distribution (N, K):
    the ages where the cumulative probability first reaches (1 - mass) / 2 and (1 + mass) / 2."""
    cdf = np.cumsum(np.atleast_2d(probs), axis=-1)
    tail = (1 - mass) / 2
    low = (cdf < tail).sum(axis=-1)
    high = np.minimum((cdf < 1 - tail).sum(axis=-1), cdf.shape[-1] - 1)
    return low, high


def coverage(probs: np.ndarray, ages: np.ndarray, mass: float) -> float:
    """Share of the true ``ages`` inside the central ``mass`` intervals."""
    low, high = central_interval(probs, mass)
    return float(np.mean((ages >= low) & (ages <= high)))


def mean_and_std(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each distribution (N, K) over ages 0..K-1."""
    ages = np.arange(probs.shape[-1])
    mean = probs @ ages
    return mean, np.sqrt(np.clip(probs @ ages**2 - mean**2, 0.0, None))


def conformal_scale(probs: np.ndarray, ages: np.ndarray, mass: float) -> float:
    """Split-conformal half-width in predicted standard deviations: the ``ceil((n + 1) mass)``-th
    smallest score ``|age - mean| / std`` of the calibration faces (infinite when there are too
    few of them for ``mass``)."""
    mean, std = mean_and_std(probs)
    scores = np.sort(np.abs(np.asarray(ages) - mean) / np.maximum(std, 1e-6))
    k = int(np.ceil((len(scores) + 1) * mass))
    return float(scores[k - 1]) if k <= len(scores) else np.inf


def conformal_interval(probs: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The whole ages within ``scale`` standard deviations of each mean (inclusive bounds, within
    0..K-1): an integer age lies in it exactly when ``|age - mean| <= scale * std``."""
    mean, std = mean_and_std(np.atleast_2d(probs))
    top = probs.shape[-1] - 1
    low = np.clip(np.ceil(mean - scale * std), 0, top).astype(int)
    high = np.clip(np.floor(mean + scale * std), 0, top).astype(int)
    return low, np.maximum(high, low)


def nll(probs: np.ndarray, ages: np.ndarray) -> float:
    """Mean negative log-likelihood of the true ages."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(ages)), ages], 1e-12, None))))


def fit_temperature(probs: np.ndarray, ages: np.ndarray) -> float:
    """The temperature (between 0.1 and 10) that maximises the likelihood of ``ages``."""
    found = minimize_scalar(lambda log_t: nll(temper(probs, np.exp(log_t)), ages),
                            bounds=(np.log(0.1), np.log(10.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


INTERVALS = ("temperature", "conformal")


def intervals(probs: np.ndarray, method: str, mass: float, temperature: float,
              scales: dict[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The ``mass`` intervals of ``method``: the central interval of the tempered distribution,
    or the conformal one."""
    if method == "temperature":
        return central_interval(temper(probs, temperature), mass)
    return conformal_interval(probs, scales[mass])


@dataclass
class Calibration:
    temperature: float
    table: pd.DataFrame  # coverage and likelihood before and after, on validation and test
    checkpoint: str
    tta: str
    scales: dict[float, float]   # conformal half-widths in standard deviations, per mass
    by_group: pd.DataFrame       # coverage per life stage and gender of both methods (coverage_by_group)
    interval: str                # the method chosen on validation (one of INTERVALS)

    def describe(self) -> str:
        test = self.table.set_index("split").loc["test"]
        gaps = self.by_group[self.by_group["split"] == "val"].groupby("method")["stage gap"].first()
        return (f"temperature {self.temperature:.3f} (fitted on validation); test coverage of the 50% / 90% "
                f"intervals {test['50% raw']:.3f} / {test['90% raw']:.3f} raw, "
                f"{test['50% calibrated']:.3f} / {test['90% calibrated']:.3f} calibrated; conformal half-widths "
                f"{self.scales[0.5]:.2f} / {self.scales[0.9]:.2f} standard deviations; intervals reported: "
                f"{self.interval} (mean coverage error per life stage on validation {gaps['temperature']:.3f} "
                f"with the temperature, {gaps['conformal']:.3f} conformal)")


def coverage_by_group(parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], temperature: float,
                      scales: dict[float, float], resamples: int = 2000) -> pd.DataFrame:
    """Per split (name -> (probs, ages, genders)), method and group (all faces, each life stage,
    each gender): coverage of the 50% and 90% intervals with 95% bootstrap intervals over the
    faces, and ``stage gap``, the method's mean |coverage - mass| over life stages and masses."""
    rows = []
    for name, (probs, ages, genders) in parts.items():
        stage = life_stage(ages).astype(str).to_numpy()
        groups = [("all", np.ones(len(ages), bool))] + [(s, stage == s) for s in LIFE_STAGES] + \
                 [(g, np.asarray(genders) == g) for g in sorted(set(genders)) if g]
        for method in INTERVALS:
            inside = {}
            for mass in MASSES:
                low, high = intervals(probs, method, mass, temperature, scales)
                inside[mass] = ((ages >= low) & (ages <= high)).astype(float)
            first = len(rows)
            for group, cell in groups:
                if not cell.any():
                    continue
                row = {"split": name, "method": method, "group": group, "faces": int(cell.sum())}
                for mass in MASSES:
                    row[f"{mass:.0%}"] = float(inside[mass][cell].mean())
                    row[f"{mass:.0%} low"], row[f"{mass:.0%} high"] = bootstrap_mean(inside[mass][cell], resamples=resamples)
                rows.append(row)
            stages = [r for r in rows[first:] if r["group"] in LIFE_STAGES]
            gap = float(np.mean([abs(r[f"{m:.0%}"] - m) for r in stages for m in MASSES]))
            for r in rows[first:]:
                r["stage gap"] = gap
    return pd.DataFrame(rows)


def coverage_table(parts: dict[str, tuple[np.ndarray, np.ndarray]], temperature: float) -> pd.DataFrame:
    """Per split (name -> (probs, ages)): interval coverage and NLL raw and at ``temperature``."""
    rows = []
    for name, (probs, ages) in parts.items():
        tempered = temper(probs, temperature)
        row = {"split": name, "faces": len(ages)}
        for mass in MASSES:
            row[f"{mass:.0%} raw"] = coverage(probs, ages, mass)
            row[f"{mass:.0%} calibrated"] = coverage(tempered, ages, mass)
        row["NLL raw"], row["NLL calibrated"] = nll(probs, ages), nll(tempered, ages)
        rows.append(row)
    return pd.DataFrame(rows)


def calibrate(checkpoint: str | Path, tta: str = "none", progress: bool = True, save: bool = True) -> Calibration:
    """Fit the temperature of ``checkpoint`` on its validation split, measure coverage on
    validation and test, and (``save``) write ``calibration.json`` beside it (atomically)."""
    parts = {}
    for part in ("val", "test"):
        result = evaluate([checkpoint], tta=tta, part=part, progress=progress)
        parts[part] = (result.probs, result.table["true_age"].to_numpy(), result.genders)
    temperature = fit_temperature(*parts["val"][:2])
    scales = {mass: conformal_scale(*parts["val"][:2], mass) for mass in MASSES}
    by_group = coverage_by_group(parts, temperature, scales)
    gaps = by_group[by_group["split"] == "val"].groupby("method")["stage gap"].first()
    chosen = min(INTERVALS, key=lambda m: gaps[m])
    result = Calibration(temperature, coverage_table({k: v[:2] for k, v in parts.items()}, temperature),
                         str(checkpoint), tta, scales, by_group, chosen)
    if save:
        with atomic_path(Path(checkpoint).with_name(CALIBRATION_FILE)) as tmp:
            tmp.write_text(json.dumps({"temperature": temperature, "tta": tta, "fitted_on": "val",
                                       "interval": chosen, "conformal": {f"{m:g}": q for m, q in scales.items()},
                                       "coverage": result.table.to_dict(orient="records")}, indent=1))
    return result


def saved_conformal(checkpoint: str | Path) -> dict[float, float] | None:
    """The conformal half-widths ``calibrate`` saved beside ``checkpoint`` when it chose them
    over the temperature, else None."""
    path = Path(checkpoint).with_name(CALIBRATION_FILE)
    try:
        saved = json.loads(path.read_text())
        if saved.get("interval") != "conformal":
            return None
        scales = {float(m): float(q) for m, q in saved["conformal"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return scales if set(scales) == set(MASSES) and all(0 < q < np.inf for q in scales.values()) else None


def saved_temperature(checkpoint: str | Path) -> float | None:
    """The temperature ``calibrate`` saved beside ``checkpoint``, or None."""
    path = Path(checkpoint).with_name(CALIBRATION_FILE)
    try:
        value = float(json.loads(path.read_text())["temperature"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if 0 < value < np.inf else None
