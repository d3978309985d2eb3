"""Chapters 04-05: evaluating checkpoints with test-time augmentation and ensembles, metrics,
the ablation and the tables of the paper."""
from .metrics import cumulative_scores, mae, mae_per_group, predictions_table, summary

__all__ = ["cumulative_scores", "mae", "mae_per_group", "predictions_table", "summary"]
