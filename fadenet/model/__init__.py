"""The FADE-Net network, its baselines, ImageNet weights, inference and size/cost summaries."""
from .network import AgeNet, CoordinateAttention, MultiScaleFusion, SpatialPyramidPooling, build_model
from ..data.tensors import denormalize, normalize, to_tensor
from .predict import (age_spread, eval_mode, expected_age, predict, predict_probs, rescale,
                      tta_views)
from .summary import count_macs, count_parameters, format_summary, parameter_table
from .weights import (RandomInitWarning, WeightsUnavailable, load_imagenet_state, resolve_backbone,
                      weight_file, weights_obtainable)

__all__ = [
    "AgeNet", "CoordinateAttention", "MultiScaleFusion", "SpatialPyramidPooling", "build_model",
    "age_spread", "denormalize", "eval_mode", "expected_age", "normalize", "predict", "predict_probs", "rescale", "to_tensor",
    "tta_views", "count_macs", "count_parameters", "format_summary", "parameter_table", "RandomInitWarning",
    "WeightsUnavailable", "load_imagenet_state", "resolve_backbone", "weight_file", "weights_obtainable",
]
