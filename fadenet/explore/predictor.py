"""Predicting the age of faces in a user's own pictures with a trained checkpoint.

A picture is read robustly (:func:`fadenet.data.faces.read_rgb`: EXIF orientation, 16-bit,
palette, transparency, animations), every face in it found and aligned into the training crops'
geometry (:mod:`fadenet.data.detect`), and predicted with the chosen TTA. The predicted
distribution's spread is tempered by the checkpoint's calibration (``calibration.json`` beside
it, from ``python -m fadenet calibrate``), so that its 50% and 90% intervals hold the true age
about as often as they say; the predicted age stays the network's expected age.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from ..data import detect, faces
from ..data.detect import Face
from ..evaluation.calibration import central_interval, conformal_interval, saved_conformal, saved_temperature, temper
from ..model import AgeNet, predict_probs
from ..training import CheckpointError, load_model
from ..runtime import auto_precision

log = logging.getLogger("fadenet.predict")


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


def whole_picture(rgb: np.ndarray) -> Face:
    """The picture's centred square as a face of score 0, without landmarks (where no face is found)."""
    h, w = rgb.shape[:2]
    side = min(w, h)
    return Face(((w - side) / 2, (h - side) / 2, float(side), float(side)), 0.0, None)


def moments(probs: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a distribution over ages 0..K-1."""
    ages = np.arange(len(probs))
    mean = float(probs @ ages)
    return mean, float(np.sqrt(max(0.0, probs @ ages**2 - mean**2)))


def interval(probs: np.ndarray, mass: float = 0.9) -> tuple[int, int]:
    """The central ``mass`` interval (lowest, highest age) of one distribution over ages 0..K-1."""
    low, high = central_interval(probs, mass)
    return int(low[0]), int(high[0])


@dataclass
class FacePrediction:
    face: Face            # where it is in the picture (the centred square, if none was detected)
    detected: bool        # False: no face found, the whole picture's centred square was predicted
    crop: np.ndarray      # the network's input, uint8 (S, S, 3)
    probs: np.ndarray     # predicted distribution over ages 0..K-1, as the network gives it
    temperature: float | None = None  # the checkpoint's calibration, None: uncalibrated
    conformal: dict[float, float] | None = None  # conformal half-widths per mass, where calibrate chose them

    @property
    def age(self) -> float:
        """The expected age of the network's distribution (what evaluation scores)."""
        return moments(self.probs)[0]

    @functools.cached_property
    def calibrated_probs(self) -> np.ndarray:
        return self.probs if self.temperature is None else temper(self.probs[None], self.temperature)[0]

    @property
    def std(self) -> float:
        """The spread of the calibrated distribution."""
        return moments(self.calibrated_probs)[1]

    def interval(self, mass: float) -> tuple[int, int]:
        """The ``mass`` interval calibration chose: conformal, or central of the calibrated distribution."""
        if self.conformal and mass in self.conformal:
            low, high = conformal_interval(self.probs[None], self.conformal[mass])
            return int(low[0]), int(high[0])
        return interval(self.calibrated_probs, mass)


def onnx_session(checkpoint: Path):
    """The network of the ``model.onnx`` exported beside ``checkpoint``, in ONNX Runtime."""
    from ..deploy.export import OnnxNetwork, ort_session
    path = checkpoint.with_name("model.onnx")
    if not path.is_file() or path.stat().st_mtime < checkpoint.stat().st_mtime:
        raise CheckpointError(f"no up-to-date {path} for --engine onnx: write it with "
                              f"python -m fadenet export --checkpoint {checkpoint}")
    return OnnxNetwork(ort_session(path, spin=False))  # the detector runs between its calls


@dataclass
class AgePredictor:
    """A trained network with the input size, TTA, detector and calibration it predicts with."""
    model: AgeNet
    size: int
    tta: str = "none"
    scales: tuple[float, ...] = (0.9, 1.0, 1.1)
    batch_size: int = 64
    detector: str = "auto"
    temperature: float | None = None  # None: uncalibrated (the raw distribution)
    conformal: dict[float, float] | None = None  # intervals mean +- q std per mass instead (calibration chose them)
    session: torch.nn.Module | None = None  # the same network in ONNX Runtime, used instead of it

    @classmethod
    def from_checkpoint(cls, path: str | Path, tta: str = "none", detector: str = "auto",
                        engine: str = "torch") -> "AgePredictor":
        """Load ``path`` safely (weights only) with its calibration if one was saved beside it;
        CheckpointError says plainly what is wrong. ``engine`` onnx runs the network with ONNX
        Runtime from the ``model.onnx`` that ``python -m fadenet export`` checked and wrote beside it."""
        model, cfg, _ = load_model(path)
        return cls.for_model(model, cfg, path, tta, detector, engine)

    @classmethod
    def for_model(cls, model: AgeNet, cfg, path: str | Path, tta: str = "none", detector: str = "auto",
                  engine: str = "torch") -> "AgePredictor":
        """:meth:`from_checkpoint` for a network already loaded from ``path`` (with its config)."""
        temperature = saved_temperature(path)
        if temperature is None:
            log.warning("no calibration beside %s: intervals come from the raw distribution "
                        "(python -m fadenet calibrate --checkpoint %s)", Path(path).name, path)
        session = onnx_session(Path(path)) if engine == "onnx" else None
        return cls(model, cfg.data.size, tta, tuple(cfg.eval.scales), detector=detect.resolve(detector),
                   temperature=temperature, conformal=saved_conformal(path), session=session)

    def with_tta(self, tta: str) -> "AgePredictor":
        return dataclasses.replace(self, tta=tta)

    def with_calibration(self, calibration) -> "AgePredictor":
        """The predictor with a fitted :class:`~fadenet.evaluation.calibration.Calibration`: its
        temperature, and its conformal intervals where it chose them."""
        conformal = calibration.scales if calibration.interval == "conformal" else None
        return dataclasses.replace(self, temperature=calibration.temperature, conformal=conformal)

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """The network's distributions (N, K) of uint8 face crops (N, S, S, 3)."""
        network = self.model if self.session is None else self.session
        return predict_probs(network, crops, np.arange(len(crops)), self.tta, self.scales, self.batch_size,
                             precision=auto_precision(torch.device("cpu")))

    def predict_image(self, rgb: np.ndarray, whole_image: bool = False) -> list[FacePrediction]:
        """One prediction per face found, largest first. With none found: nothing, or with
        ``whole_image`` the whole picture's centred square."""
        found = detect.detect(rgb, self.detector)
        detected = bool(found)
        if detected:
            crops = [detect.align(rgb, face, self.size) for face in found]
        elif whole_image:
            found, crops = [whole_picture(rgb)], [faces.crop_square(rgb, None, self.size)]
        else:
            return []
        crops = np.stack(crops)
        return [FacePrediction(face, detected, crop, probs, self.temperature, self.conformal)
                for face, crop, probs in zip(found, crops, self.predict_crops(crops))]
