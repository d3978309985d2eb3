"""Chapters 04-05: predictions with test-time augmentation, ensembles, metrics, the ablation
and the tables of the paper. ``fadenet.evaluation.evaluate`` (checkpoints -> predictions) is
imported on its own because it builds on ``fadenet.training``, which itself predicts with
this package."""
from .metrics import cumulative_scores, mae, mae_per_group, predictions_table, summary
from .predict import expected_age, predict_probs, rescale, tta_views

__all__ = ["cumulative_scores", "mae", "mae_per_group", "predictions_table", "summary", "expected_age",
           "predict_probs", "rescale", "tta_views"]
