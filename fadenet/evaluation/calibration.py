"""How far to trust a predicted age: central intervals of the predicted distribution, how often
they hold the true age (coverage), and a one-parameter temperature that makes them honest.

The network predicts a distribution over ages 0..80; its central 50% and 90% intervals are
what ``predict`` reports beside the age. They are calibrated when 50% and 90% of true ages fall
inside them. A distribution that is too narrow (over-confident) or too wide is corrected by a
temperature ``t``: ``p_t ~ p ** (1 / t)``, the same as dividing the logits by ``t``. It is
fitted on the validation split by the likelihood of the true ages, and checked on the test split.
``calibrate`` writes it to ``calibration.json`` beside the checkpoint, where ``predict`` finds it.
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


def nll(probs: np.ndarray, ages: np.ndarray) -> float:
    """Mean negative log-likelihood of the true ages."""
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(ages)), ages], 1e-12, None))))


def fit_temperature(probs: np.ndarray, ages: np.ndarray) -> float:
    """The temperature (between 0.1 and 10) that maximises the likelihood of ``ages``."""
    found = minimize_scalar(lambda log_t: nll(temper(probs, np.exp(log_t)), ages),
                            bounds=(np.log(0.1), np.log(10.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


@dataclass
class Calibration:
    temperature: float
    table: pd.DataFrame  # coverage and likelihood before and after, on validation and test
    checkpoint: str
    tta: str

    def describe(self) -> str:
        test = self.table.set_index("split").loc["test"]
        return (f"temperature {self.temperature:.3f} (fitted on validation); test coverage of the 50% / 90% "
                f"intervals {test['50% raw']:.3f} / {test['90% raw']:.3f} raw, "
                f"{test['50% calibrated']:.3f} / {test['90% calibrated']:.3f} calibrated")


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
        parts[part] = (result.probs, result.table["true_age"].to_numpy())
    temperature = fit_temperature(*parts["val"])
    result = Calibration(temperature, coverage_table(parts, temperature), str(checkpoint), tta)
    if save:
        with atomic_path(Path(checkpoint).with_name(CALIBRATION_FILE)) as tmp:
            tmp.write_text(json.dumps({"temperature": temperature, "tta": tta, "fitted_on": "val",
                                       "coverage": result.table.to_dict(orient="records")}, indent=1))
    return result


def saved_temperature(checkpoint: str | Path) -> float | None:
    """The temperature ``calibrate`` saved beside ``checkpoint``, or None."""
    path = Path(checkpoint).with_name(CALIBRATION_FILE)
    try:
        value = float(json.loads(path.read_text())["temperature"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if 0 < value < np.inf else None
