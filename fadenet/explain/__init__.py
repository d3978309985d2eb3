"""Chapter 06: class activation maps of the predicted age (Grad-CAM, Grad-CAM++, Eigen-CAM)."""
from .cam import (LAYERS, METHOD_NAMES, METHODS, AgeTarget, cam_layer, compute_cams, face_region, mass_inside,
                  overlay)

__all__ = ["LAYERS", "METHOD_NAMES", "METHODS", "AgeTarget", "cam_layer", "compute_cams", "face_region",
           "mass_inside", "overlay"]
