"""Class activation maps of the predicted age, on the ``grad-cam`` package (pytorch-grad-cam).

The network regresses an age through a distribution, so the quantity explained is the
predicted age itself (the expectation of the softmax), not the logit of one age class.

Methods: ``gradcam`` and ``gradcam++`` weight a layer's channels by the gradient of that age;
``eigencam`` is gradient-free: the first principal component of the layer's activations. It
costs one forward pass and a small SVD per image, where Score-CAM and Ablation-CAM, the
package's other gradient-free methods, need one forward pass per channel (128 to 960 here)
and would take seconds per face on a CPU. It does not look at the target, so it shows what the
layer responds to most, which is a useful control next to what drives the age.

Layers (``AgeNet.cam_layers``): ``attention`` (the last coordinate-attention block, or the last
squeeze-excitation / feature block of a baseline), ``spp`` (the SPP projection; a network
without SPP gives its last feature map) and ``fusion`` (the texture/semantic fusion output).
"""
from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from ..data.loader import FACE_ZONES
from ..model import AgeNet, eval_mode, normalize, predict, to_tensor


class SignedEigenCAM(EigenCAM):
    """Eigen-CAM: each face's activations projected on their first principal component, with
    its sign chosen so that the larger-magnitude end is positive (an SVD's sign is arbitrary;
    without this the ReLU that follows keeps the wrong end, often the background, at random).
    The projection is computed for the whole batch at once and without the full C x C basis
    that the package's per-image version builds, which made it the slowest of the methods."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        a = torch.nan_to_num(torch.as_tensor(activations, dtype=torch.float32))
        b, c, h, w = a.shape
        x = a.reshape(b, c, h * w).transpose(1, 2)
        x = x - x.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        projection = (x @ vh[:, 0, :, None]).squeeze(-1)
        flip = projection.amin(dim=1).abs() > projection.amax(dim=1).abs()
        projection = torch.where(flip[:, None], -projection, projection)
        return projection.reshape(b, h, w).numpy()


METHODS: dict[str, type[BaseCAM]] = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": SignedEigenCAM}
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "eigencam": "Eigen-CAM"}
LAYERS = ("attention", "spp", "fusion")
# in words; "spp" is the map before pooling: the SPP output where the network has one, else the backbone's last
LAYER_NAMES = {"attention": "last attention block", "spp": "last feature map", "fusion": "multi-scale fusion"}


class AgeTarget:
    """The CAM target: the predicted age, i.e. the expectation of the softmax over the ages,
    of one sample's logits (the package calls it once per sample)."""

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return predict(logits)[1]


def cam_layer(model: AgeNet, name: str) -> nn.Module:
    """The layer called ``name`` in :meth:`AgeNet.cam_layers`, or a ValueError naming the choices."""
    layers = model.cam_layers()
    if name not in layers:
        raise ValueError(f"CAM layer {name!r} is not one of {', '.join(layers)} for this network")
    return layers[name]


def compute_cams(model: AgeNet, images: np.ndarray, method: str = "gradcam", layer: str = "attention",
                 batch_size: int = 32) -> np.ndarray:
    """CAMs (N, S, S) in [0, 1] of the uint8 faces ``images`` (N, S, S, 3), each map scaled to
    its own maximum (an all-zero map means no positive evidence at that layer)."""
    if method not in METHODS:
        raise ValueError(f"CAM method {method!r} is not one of {', '.join(METHODS)}")
    target_layer = cam_layer(model, layer)
    device = next(model.parameters()).device
    maps = []
    # the package switches the model to eval mode and leaves it there; eval_mode restores it
    with eval_mode(model), torch.enable_grad():
        cam = METHODS[method](model, [target_layer])
        try:
            for start in range(0, len(images), batch_size):
                x = normalize(to_tensor(images[start:start + batch_size])).to(device)
                maps.append(cam(x, [AgeTarget()] * len(x)))
        finally:
            # __exit__ removes the hooks; a ``with`` block is avoided because the package's
            # __exit__ swallows IndexError, which would hide a failure behind partial results
            cam.__exit__(None, None, None)
    size = images.shape[1:3]
    return np.concatenate(maps).astype(np.float32) if maps else np.zeros((0, *size), np.float32)


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The uint8 RGB ``image`` with ``cam`` drawn over it as a heat map (uint8 RGB)."""
    return show_cam_on_image(image.astype(np.float32) / 255, cam, use_rgb=True, image_weight=image_weight)


def face_region() -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1), fractions of the side: the box around the eye, nose and mouth zones
    of an aligned face crop (the zones that safe random erasing protects)."""
    x0, y0 = FACE_ZONES[:, 0].min().item(), FACE_ZONES[:, 1].min().item()
    x1, y1 = FACE_ZONES[:, 2].max().item(), FACE_ZONES[:, 3].max().item()
    return x0, y0, x1, y1


def region_mask(size: int, region: tuple[float, float, float, float]) -> np.ndarray:
    """Boolean (size, size) mask of the pixels whose centres lie in ``region``."""
    centres = (np.arange(size) + 0.5) / size
    x0, y0, x1, y1 = region
    inside_x = (centres >= x0) & (centres < x1)
    inside_y = (centres >= y0) & (centres < y1)
    return inside_y[:, None] & inside_x[None, :]


def mass_inside(cams: np.ndarray, region: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Share of each map's total value that lies inside ``region`` (default: :func:`face_region`);
    NaN for an all-zero map. A map spread evenly over the crop scores the region's area share."""
    mask = region_mask(cams.shape[-1], region or face_region())
    total = cams.sum(axis=(1, 2))
    inside = (cams * mask).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)
