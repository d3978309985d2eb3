"""Finding faces in a user's photo and turning each into the crop the network learnt from.

Two detectors:

- ``mtcnn``: MTCNN (facenet-pytorch, MIT licence; its three small networks ship inside the
  package, nothing is downloaded). It returns five landmarks per face (both eyes, the nose
  tip, both mouth corners), so a face is rotated and scaled by them onto FACE_TEMPLATE: the
  positions those landmarks have in the training crops. A tilted face is straightened, and a
  face of any size fills the crop as the training faces do.
- ``haar``: OpenCV's frontal-face Haar cascade, the fallback where facenet-pytorch is not
  installed. It gives a box only: the face is cut as a square around it (``faces.FACE_MARGIN``
  times its side), not straightened.

``auto`` is MTCNN when it can be imported, else Haar (with one log line).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..config import DETECTORS
from . import faces

log = logging.getLogger("fadenet.detect")

# Detection runs on a copy whose longer side is at most this: a face of 10% of a picture's width
# is still about 30 pixels there (MTCNN finds faces from 20), and detection cost grows with area.
DETECT_SIDE = 320
# Where MTCNN puts the five landmarks in the training crops, as fractions of the crop's side
# (x, y): eye on the image's left, eye on the image's right, nose tip, left and right mouth
# corner. Median over every 40th All-Age-Faces image (332 of 334 found), each cut as training cuts
# it (faces.aligned_face_box) at 224 px: measured by ``landmark_template`` (tests/test_detect.py
# checks it on the data where AAF is present). The AFAD-Full crops are framed by their authors,
# differently; a model trained on AFAD is fed this framing too (unmeasured).
FACE_TEMPLATE = np.array([[0.325, 0.412], [0.663, 0.403], [0.499, 0.610], [0.357, 0.767], [0.647, 0.758]])
MIN_SIDE = 20     # pictures smaller than the smallest face either detector finds hold none
MIN_SCORE = 0.9  # MTCNN's face probability below which a detection is dropped


@dataclass(frozen=True)
class Face:
    """A face found in a picture, in its pixels."""
    box: tuple[float, float, float, float]  # left, top, width, height of the detector's box
    score: float                            # the detector's confidence (Haar: 1)
    landmarks: np.ndarray | None            # (5, 2) as in FACE_TEMPLATE, or None (Haar)

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def contains(self, x: float, y: float) -> bool:
        left, top, width, height = self.box
        return left <= x <= left + width and top <= y <= top + height


def available(name: str) -> bool:
    """Whether detector ``name`` can run here."""
    if name != "mtcnn":
        return name in DETECTORS
    try:
        _mtcnn()
    except ImportError:
        return False
    return True


def resolve(name: str) -> str:
    """``auto`` -> mtcnn where facenet-pytorch imports, else haar; other names must be known."""
    if name not in DETECTORS:
        raise ValueError(f"detector {name!r} is not one of {', '.join(DETECTORS)}")
    if name == "auto":
        if available("mtcnn"):
            return "mtcnn"
        log.warning("facenet-pytorch is not installed: faces are found with the Haar cascade, "
                    "without landmarks or alignment (pip install facenet-pytorch==2.5.3)")
        return "haar"
    return name


def detect(rgb: np.ndarray, detector: str = "auto") -> list[Face]:
    """Every face in an RGB uint8 picture, largest first."""
    name = resolve(detector)
    if min(rgb.shape[:2]) < MIN_SIDE:
        return []
    found = mtcnn_faces(rgb) if name == "mtcnn" else haar_faces(rgb)
    return sorted(found, key=lambda f: -f.area)


def haar_faces(rgb: np.ndarray) -> list[Face]:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = min(1.0, 640 / max(gray.shape))  # detection on a bounded size keeps big photos fast
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
    found = _cascade().detectMultiScale(small, scaleFactor=1.1, minNeighbors=5,
                                        minSize=(max(24, small.shape[0] // 10),) * 2)
    return [Face(tuple(float(v) for v in b / scale), 1.0, None) for b in np.asarray(found).reshape(-1, 4)]


def mtcnn_faces(rgb: np.ndarray) -> list[Face]:
    scale = min(1.0, DETECT_SIDE / max(rgb.shape[:2]))
    small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    with torch.inference_mode():
        boxes, scores, points = _mtcnn().detect(np.ascontiguousarray(small), landmarks=True)
    if boxes is None:
        return []
    # facenet-pytorch hands back object arrays under NumPy 2; through lists they become floats
    boxes = np.asarray(boxes.tolist(), float) / scale
    points = np.asarray(points.tolist(), float) / scale
    return [Face((x0, y0, x1 - x0, y1 - y0), float(s), p)
            for (x0, y0, x1, y1), s, p in zip(boxes, np.asarray(scores.tolist(), float), points) if s >= MIN_SCORE]


def align(rgb: np.ndarray, face: Face, size: int) -> np.ndarray:
    """The ``size`` x ``size`` crop of ``face`` in the training crops' geometry: a similarity
    transform (rotation, scale, shift) of its landmarks onto FACE_TEMPLATE; without landmarks, the
    square around its box (``framed_box``)."""
    if face.landmarks is None:
        return faces.crop_square(rgb, framed_box(face), size)
    matrix = similarity(face.landmarks, FACE_TEMPLATE * size)
    shrink = 1 / np.sqrt(abs(np.linalg.det(matrix[:, :2])))  # picture pixels per crop pixel
    if shrink > 1.5:  # warpAffine samples points: shrink a much larger face first, without aliasing
        factor = 1.5 / shrink
        rgb = cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        matrix = matrix @ np.diag([1 / factor, 1 / factor, 1.0])
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity transform taking the points ``source`` onto ``target``
    (Umeyama's method without reflection)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(t.T @ s / len(s))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(sigma) @ d) / (s**2).sum(1).mean()
    return np.hstack([scale * rotation, (mu_t - scale * rotation @ mu_s)[:, None]])


def framed_box(face: Face) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the square crop around a detector box: FACE_MARGIN times
    its longer side, on its centre (``data.crop=face``)."""
    left, top, width, height = face.box
    return left + width / 2, top + height / 2, max(width, height) * faces.FACE_MARGIN


def landmark_template(crops: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Median MTCNN landmarks of square training crops as fractions of their side, and in how
    many of the crops a face was found: how FACE_TEMPLATE was measured."""
    found = []
    for crop in crops:
        detected = mtcnn_faces(crop)
        if detected:
            found.append(max(detected, key=lambda f: f.area).landmarks / crop.shape[0])
    return np.median(np.stack(found), axis=0), len(found)


@functools.cache
def _cascade() -> cv2.CascadeClassifier:
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


@functools.cache
def _mtcnn():
    from facenet_pytorch import MTCNN  # its pins (torch 2.2) are not ours: installed without them
    # channels-last weights make its convolutions and pooling faster on CPU: a quarter off each
    # picture, the landmarks the same within 1e-4 pixel
    return MTCNN(keep_all=True, device="cpu", min_face_size=20).to(memory_format=torch.channels_last)
