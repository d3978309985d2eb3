"""Predicting the age of faces in a user's own pictures with a trained checkpoint.

A picture is read robustly (:func:`fadenet.data.faces.read_rgb`), its faces found with OpenCV's
frontal-face Haar cascade and cut out as square crops framed like the training faces (see
:mod:`fadenet.data.faces`: AAF's fixed eye-aligned box and the detector's box frame a face
alike), resized to the checkpoint's input size, and predicted with the chosen TTA.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import torch
from PIL import Image

from ..data import faces
from ..model import predict_probs
from ..model import AgeNet
from ..training import load_model
from ..training.trainer import auto_precision

Box = tuple[float, float, float]  # centre x, centre y, side of a square crop, in image pixels


def read_image(source: str | Path | BinaryIO) -> np.ndarray:
    """RGB uint8 of an image file (or file object); ImageReadError says why it cannot be read."""
    with warnings.catch_warnings():
        # PIL refuses images over twice its pixel limit but only warns between one and two
        # times it; those are refused here too, before they are decoded
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return faces.read_rgb(source)
        except Image.DecompressionBombWarning:
            raise faces.ImageReadError(f"image larger than {faces.MAX_PIXELS:,} pixels") from None


@functools.cache
def _cascade() -> cv2.CascadeClassifier:
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def detect_faces(rgb: np.ndarray) -> list[Box]:
    """Every frontal face, largest first, each framed as :func:`fadenet.data.faces.detect_face`
    frames the largest one (same cascade, parameters and margin)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = min(1.0, 640 / max(gray.shape))
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
    found = _cascade().detectMultiScale(small, scaleFactor=1.1, minNeighbors=5,
                                        minSize=(max(24, small.shape[0] // 10),) * 2)
    boxes = sorted((tuple(b) for b in np.asarray(found).reshape(-1, 4) / scale), key=lambda b: -b[2] * b[3])
    return [(x + w / 2, y + h / 2, max(w, h) * faces.FACE_MARGIN) for x, y, w, h in boxes]


def centre_box(rgb: np.ndarray) -> Box:
    """The centred square of the whole image (what ``crop_square(rgb, None, ...)`` cuts)."""
    h, w = rgb.shape[:2]
    return w / 2, h / 2, float(min(w, h))


def moments(probs: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a distribution over ages 0..K-1."""
    ages = np.arange(len(probs))
    mean = float(probs @ ages)
    return mean, float(np.sqrt(max(0.0, probs @ ages**2 - mean**2)))


def interval(probs: np.ndarray, mass: float = 0.9) -> tuple[int, int]:
    """The central ``mass`` interval (lowest, highest age) of a distribution over ages 0..K-1."""
    cdf = np.cumsum(probs)
    tail = (1 - mass) / 2
    return int(np.searchsorted(cdf, tail)), int(min(np.searchsorted(cdf, 1 - tail), len(probs) - 1))


@dataclass
class FacePrediction:
    box: Box              # the square crop in the picture's pixels
    detected: bool        # False: the whole picture's centred square, no face having been found
    crop: np.ndarray      # the network's input, uint8 (S, S, 3)
    probs: np.ndarray     # predicted distribution over ages 0..K-1

    @property
    def age(self) -> float:
        return moments(self.probs)[0]

    @property
    def std(self) -> float:
        return moments(self.probs)[1]

    @property
    def interval90(self) -> tuple[int, int]:
        return interval(self.probs, 0.9)

    def corner_box(self) -> tuple[int, int, int]:
        """(left, top, side) of the crop in whole pixels; may reach beyond the picture."""
        cx, cy, side = self.box
        return int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side))


@dataclass
class AgePredictor:
    """A trained network with the input size and TTA it predicts with."""
    model: AgeNet
    size: int
    tta: str = "none"
    scales: tuple[float, ...] = (0.9, 1.0, 1.1)
    batch_size: int = 64

    @classmethod
    def from_checkpoint(cls, path: str | Path, tta: str = "none") -> "AgePredictor":
        """Load ``path`` safely (weights only); CheckpointError says plainly what is wrong."""
        model, cfg, _ = load_model(path)
        return cls(model, cfg.data.size, tta, tuple(cfg.eval.scales))

    def with_tta(self, tta: str) -> "AgePredictor":
        return dataclasses.replace(self, tta=tta)

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """Distributions (N, K) of uint8 face crops (N, S, S, 3)."""
        return predict_probs(self.model, crops, np.arange(len(crops)), self.tta, self.scales, self.batch_size,
                             precision=auto_precision(torch.device("cpu")))

    def predict_image(self, rgb: np.ndarray, whole_image: bool = False) -> list[FacePrediction]:
        """One prediction per face found, largest first. With none found: nothing, or with
        ``whole_image`` the whole picture's centred square."""
        boxes = detect_faces(rgb)
        detected = bool(boxes)
        if not detected:
            if not whole_image:
                return []
            boxes = [centre_box(rgb)]
        crops = np.stack([faces.crop_square(rgb, box, self.size) for box in boxes])
        return [FacePrediction(box, detected, crop, probs)
                for box, crop, probs in zip(boxes, crops, self.predict_crops(crops))]

