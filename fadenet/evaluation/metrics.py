"""Age-estimation metrics over predicted distributions: MAE, cumulative score, MAE per age group,
and the per-sample predictions table every other table and figure is computed from."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.sources import age_group

CS_LEVELS = tuple(range(11))  # CS@k for k = 0..10 years


def predictions_table(probs: np.ndarray, ages: np.ndarray, paths=None) -> pd.DataFrame:
    """One row per face: true age, expected age, the distribution's standard deviation, the
    signed and absolute error, the age group and (when given) the image path."""
    bins = np.arange(probs.shape[1], dtype=np.float64)
    probs = probs.astype(np.float64)
    mean = probs @ bins
    std = np.sqrt(np.clip(probs @ bins**2 - mean**2, 0.0, None))
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


def median_predictor_mae(test_ages: np.ndarray, train_ages: np.ndarray) -> float:
    """MAE of always answering the training set's median age: the floor a model must beat."""
    return float(np.abs(np.asarray(test_ages) - np.median(train_ages)).mean())
