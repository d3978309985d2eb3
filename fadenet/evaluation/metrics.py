"""Age-estimation metrics over predicted distributions: MAE, cumulative score, MAE per age group,
and the per-sample predictions table every other table and figure is computed from."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.sources import age_group
from ..model import age_spread, expected_age

CS_LEVELS = tuple(range(11))  # CS@k for k = 0..10 years


def predictions_table(probs: np.ndarray, ages: np.ndarray, paths=None) -> pd.DataFrame:
    """One row per face: true age, expected age, the distribution's standard deviation, the
    signed and absolute error, the age group and (when given) the image path."""
    mean = expected_age(np.asarray(probs, dtype=np.float64))
    std = age_spread(probs)
    ages = np.asarray(ages, dtype=np.float64)
    table = pd.DataFrame({"true_age": ages.astype(int), "predicted_age": mean, "std": std,
                          "error": mean - ages, "abs_error": np.abs(mean - ages),
                          "age_group": age_group(ages).astype(str).to_numpy()})
    if paths is not None:
        table.insert(0, "path", list(paths))
    return table


def mae(table: pd.DataFrame) -> float:
    return float(table["abs_error"].mean())


def cumulative_scores(table: pd.DataFrame, levels=CS_LEVELS) -> pd.Series:
    """CS@k: the share of faces whose absolute error is at most k years."""
    errors = table["abs_error"].to_numpy()
    return pd.Series([float((errors <= k).mean()) for k in levels], index=pd.Index(levels, name="k"),
                     name="CS")


def mae_per_group(table: pd.DataFrame) -> pd.DataFrame:
    """MAE, mean signed error and face count of each age group present in the table."""
    groups = table.groupby("age_group", observed=True)
    return pd.DataFrame({"faces": groups.size(), "MAE": groups["abs_error"].mean(),
                         "mean error": groups["error"].mean()}).reset_index()


def summary(table: pd.DataFrame) -> dict[str, float]:
    """Faces, MAE and CS@5 of a predictions table."""
    return {"faces": len(table), "MAE": mae(table), "CS@5": float(cumulative_scores(table, (5,)).iloc[0])}


def bootstrap_mean(values: np.ndarray, level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of per-face ``values``, resampling the faces."""
    values = np.asarray(values, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    return float(np.quantile(means, 0.5 - level / 2)), float(np.quantile(means, 0.5 + level / 2))


LIFE_STAGE_EDGES = (0, 13, 20, 40, 60, 200)  # children, teenagers, young adults, middle age, 60 and over
LIFE_STAGES = ("0-12", "13-19", "20-39", "40-59", "60+")


def life_stage(ages) -> pd.Categorical:
    """The coarse age groups of the fairness and coverage tables (few enough faces per group
    and gender for an interval)."""
    return pd.cut(pd.Series(np.asarray(ages)), LIFE_STAGE_EDGES, right=False, labels=LIFE_STAGES)


def fairness_table(table: pd.DataFrame, gender, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """MAE, mean signed error (bias: above 0, the model calls people older than they are) and
    CS@5 per gender x life stage, and per gender over all ages, each with a 95% bootstrap
    interval over the faces of the cell."""
    gender = pd.Series(np.asarray(gender), dtype=str)
    stage = life_stage(table["true_age"]).astype(str)
    rows = []
    for g in sorted(gender.unique()):
        for s in (*LIFE_STAGES, "all"):
            cell = ((gender == g) & ((stage == s) | (s == "all"))).to_numpy()
            if not cell.any():
                continue
            abs_err, err = table["abs_error"].to_numpy()[cell], table["error"].to_numpy()[cell]
            row = {"gender": g, "ages": s, "faces": int(cell.sum())}
            for name, values in (("MAE", abs_err), ("bias", err), ("CS@5", (abs_err <= 5).astype(float))):
                row[name] = float(values.mean())
                row[f"{name} low"], row[f"{name} high"] = bootstrap_mean(values, resamples=resamples, seed=seed)
            rows.append(row)
    return pd.DataFrame(rows)


def median_predictor_mae(test_ages: np.ndarray, train_ages: np.ndarray) -> float:
    """MAE of always answering the training set's median age: the floor a model must beat."""
    return float(np.abs(np.asarray(test_ages) - np.median(train_ages)).mean())
