"""Chapters 04-05: predictions with test-time augmentation, ensembles and metrics."""
from .predict import expected_age, predict_probs, rescale, tta_views

__all__ = ["expected_age", "predict_probs", "rescale", "tta_views"]
