"""Chapter 07: speed benchmark and deployment (ONNX export, ONNX Runtime, INT8 quantisation)."""
from .export import (DEFAULT_INT8, INT8_RECIPES, DeployError, Export, Int8Recipe, export_checkpoint, export_onnx,
                     ort_session, quantize_int8)
from .int8 import int8_study, network_profile, op_profile
from .speed import (BACKENDS, PARALLEL_SPP, available_backends, bench_models, speed_table,
                    spp_pooling_speed)

__all__ = ["DEFAULT_INT8", "INT8_RECIPES", "DeployError", "Export", "Int8Recipe", "export_checkpoint",
           "export_onnx", "ort_session", "quantize_int8", "BACKENDS", "PARALLEL_SPP", "available_backends",
           "bench_models", "int8_study", "network_profile", "op_profile", "speed_table",
           "spp_pooling_speed"]
