"""The FADE-Net network, its baselines, ImageNet weights and size/cost summaries."""
from .network import (AgeNet, CoordinateAttention, MultiScaleFusion, SpatialPyramidPooling,
                      build_model, eval_mode, predict)
from .summary import count_macs, format_summary, parameter_table
from .weights import (RandomInitWarning, WeightsUnavailable, load_imagenet_state, resolve_backbone,
                      weight_file, weights_obtainable)

__all__ = [
    "AgeNet", "CoordinateAttention", "MultiScaleFusion", "SpatialPyramidPooling", "build_model",
    "eval_mode", "predict", "count_macs", "format_summary", "parameter_table", "RandomInitWarning",
    "WeightsUnavailable", "load_imagenet_state", "resolve_backbone", "weight_file", "weights_obtainable",
]
