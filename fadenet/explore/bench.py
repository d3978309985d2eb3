"""``python -m fadenet bench faces``: the photo path (decode, detect, align, predict) measured
against the dataset path on the same test faces.

Two kinds of input, for each detector:

- ``test files``: the test split's image files as they are, through ``predict``'s path. The
  photo path and the training path should then see the same face: the MAE should match
  evaluation's on the same faces.
- ``scenes``: each test picture pasted into a larger 640x480 picture at a random position, scale
  (the face 10-60% of the picture's width) and in-plane rotation (up to 30 degrees), a quarter
  of them with a second test face beside it, on a cluttered random background.

For each: the share of faces found (a detection whose box holds the pasted face's centre), the
MAE of the found faces, the MAE the dataset path (the cached training-style crops) gives the
same faces, and pictures per second of the whole path on one-face pictures.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, replace

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data import FaceSet, faces as face_io
from ..model import expected_age
from .predictor import AgePredictor

SCENE_SIZE = (640, 480)
FACE_WIDTH = (0.10, 0.60)  # the face's side as a share of the picture's width
MAX_ANGLE = 30.0
SECOND_FACE = 0.25         # share of scenes with a second face


@dataclass
class Scene:
    jpeg: bytes                     # the picture, JPEG-encoded (decoding is part of the path)
    rows: list[int]                 # the faces' rows in the FaceSet
    centres: list[tuple[float, float]]


def background(rng: np.random.Generator, size=SCENE_SIZE) -> np.ndarray:
    """A cluttered random picture: a smooth colour field with rectangles and ellipses on it."""
    width, height = size
    field = cv2.resize(rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(10, width // 3)), int(rng.integers(10, height // 3))
        if rng.random() < 0.5:
            cv2.rectangle(field, (x, y), (x + w, y + h), colour, -1)
        else:
            cv2.ellipse(field, (x, y), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return cv2.GaussianBlur(field, (0, 0), 1.0)


def paste(canvas: np.ndarray, photo: np.ndarray, centre: tuple[float, float], face_side: float, angle: float) -> None:
    """Paste ``photo`` (an aligned dataset picture) into ``canvas`` in place, rotated by ``angle``
    degrees and scaled so that its face crop (as training frames it) has side ``face_side``,
    with the face's centre at ``centre``."""
    cx, cy, side = face_io.aligned_face_box(photo.shape[1], photo.shape[0])
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, face_side / side)
    matrix[:, 2] += np.array(centre) - (cx, cy)
    size = (canvas.shape[1], canvas.shape[0])
    warped = cv2.warpAffine(photo, matrix, size, flags=cv2.INTER_AREA if face_side < side else cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.full(photo.shape[:2], 255, np.uint8), matrix, size) > 127
    canvas[mask] = warped[mask]


def make_scenes(faces: FaceSet, rows: np.ndarray, seed: int = 0, progress: bool = True) -> list[Scene]:
    """One scene per test face (with, in a quarter of them, another person's face beside it)."""
    if not faces.meta.get("source_folder"):
        raise ValueError("bench faces needs a dataset of image files (not the synthetic source)")
    rng = np.random.default_rng(seed)
    folder = faces.meta["source_folder"]
    width, height = SCENE_SIZE
    scenes = []
    for row in tqdm(rows, desc="scenes", unit="picture", disable=not progress):
        canvas = background(rng)
        placed: list[tuple[int, float, float, float]] = []
        others = rows[rows != row]
        wanted = [int(row)] + ([int(rng.choice(others))] if len(others) and rng.random() < SECOND_FACE else [])
        for face_row in wanted:
            photo = face_io.read_rgb(f"{folder}/{faces.table['path'].iloc[face_row]}")
            for _ in range(20):  # a free spot for a second face; the first always fits
                side = rng.uniform(*FACE_WIDTH) * width / (1 if not placed else 2)
                x, y = rng.uniform(side / 2, width - side / 2), rng.uniform(side / 2, height - side / 2)
                if all(np.hypot(x - px, y - py) > 0.75 * (side + ps) for _, px, py, ps in placed):
                    paste(canvas, photo, (x, y), side, rng.uniform(-MAX_ANGLE, MAX_ANGLE))
                    placed.append((face_row, x, y, side))
                    break
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        scenes.append(Scene(jpeg.tobytes(), [p[0] for p in placed], [(p[1], p[2]) for p in placed]))
    return scenes


def file_scenes(faces: FaceSet, rows: np.ndarray) -> list[Scene]:
    """The test files as they are: the face's centre is that of its training crop."""
    folder = faces.meta["source_folder"]
    scenes = []
    for row in rows:
        with open(f"{folder}/{faces.table['path'].iloc[row]}", "rb") as f:
            data = f.read()
        height, width = face_io.read_rgb(io.BytesIO(data)).shape[:2]
        cx, cy, _ = face_io.aligned_face_box(width, height) if faces.crop == "face" else (width / 2, height / 2, 0)
        scenes.append(Scene(data, [int(row)], [(cx, cy)]))
    return scenes


def photo_path(scenes: list[Scene], predictor: AgePredictor, progress: bool = True) -> tuple[pd.DataFrame, float]:
    """Per pasted face: found or not and the predicted age; and pictures per second of the
    whole path (decode, detect, align, predict) over the one-face pictures."""
    rows, seconds, timed = [], 0.0, 0
    for scene in tqdm(scenes, desc=f"photo path ({predictor.detector})", unit="picture", disable=not progress):
        start = time.perf_counter()
        rgb = decode(scene)
        predictions = predictor.predict_image(rgb)
        if len(scene.rows) == 1:
            seconds += time.perf_counter() - start
            timed += 1
        for row, (x, y) in zip(scene.rows, scene.centres):
            holding = [p for p in predictions if p.face.contains(x, y)]
            best = min(holding, key=lambda p: p.face.area, default=None)
            rows.append({"row": row, "found": best is not None, "predicted": best.age if best else np.nan})
    return pd.DataFrame(rows), timed / max(seconds, 1e-9)


def spread(rows: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``rows`` spread evenly over them (all of them if there are fewer)."""
    return rows[np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int)]


def decode(scene: Scene) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(scene.jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def bench_faces(predictor: AgePredictor, faces: FaceSet, rows: np.ndarray, detectors=("haar", "mtcnn"),
                seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """The table of the module docstring: one row per (detector, input)."""
    crop_age = dict(zip(map(int, rows), expected_age(predictor.predict_crops(np.asarray(faces.images[rows])))))
    inputs = {"test files": file_scenes(faces, rows),
              f"scenes {SCENE_SIZE[0]}x{SCENE_SIZE[1]}": make_scenes(faces, rows, seed, progress)}
    table = []
    for detector in detectors:
        for name, scenes in inputs.items():
            found, rate = photo_path(scenes, replace(predictor, detector=detector), progress)
            hit = found[found["found"]]
            true = faces.ages[hit["row"].to_numpy()]
            table.append({"detector": detector, "network in": "PyTorch" if predictor.session is None else "ONNX Runtime",
                          "input": name, "faces": len(found),
                          "found %": 100 * found["found"].mean(),
                          "MAE photo path": float(np.abs(hit["predicted"].to_numpy() - true).mean()),
                          "MAE dataset crops": float(np.abs(np.array([crop_age[r] for r in hit["row"]]) - true).mean()),
                          "pictures/s": rate})
    out = pd.DataFrame(table)
    out["difference"] = out["MAE photo path"] - out["MAE dataset crops"]
    return out


def corrupted_scenes(faces: FaceSet, rows: np.ndarray, corruption) -> list[Scene]:
    """The test files with ``corruption`` applied to the whole picture, sized to the face in it;
    saved losslessly (PNG) so that only the corruption itself changes the picture."""
    from ..evaluation.robustness import corrupt
    scenes = []
    for scene in file_scenes(faces, rows):
        rgb = decode(scene)
        (cx, cy), side = scene.centres[0], _face_side(faces, rgb)
        bad = corrupt(rgb, corruption, box=(cx, cy, side), seed=scene.rows[0])
        ok, data = cv2.imencode(".png", cv2.cvtColor(bad, cv2.COLOR_RGB2BGR))
        scenes.append(replace(scene, jpeg=data.tobytes()))
    return scenes


def _face_side(faces: FaceSet, rgb: np.ndarray) -> float:
    height, width = rgb.shape[:2]
    return face_io.aligned_face_box(width, height)[2] if faces.crop == "face" else float(min(width, height))


def photo_path_robustness(predictor: AgePredictor, faces: FaceSet, rows: np.ndarray, corruptions,
                          progress: bool = True) -> pd.DataFrame:
    """Per corruption (and clean): the share of faces the detector finds in the corrupted file
    and the MAE of the photo path on those, beside the MAE of the corrupted dataset crops of the
    same faces."""
    from ..evaluation.robustness import corrupt_all
    true = faces.ages[rows].astype(np.float64)
    table = []
    for c in [None, *corruptions]:
        scenes = file_scenes(faces, rows) if c is None else corrupted_scenes(faces, rows, c)
        found, _ = photo_path(scenes, predictor, progress)
        crops = np.asarray(faces.images[rows]) if c is None else corrupt_all(np.asarray(faces.images[rows]), c)
        crop_error = np.abs(expected_age(predictor.predict_crops(crops)) - true)
        hit = found["found"].to_numpy()
        table.append({"corruption": "none" if c is None else c.name, "strength": "clean" if c is None else c.strength,
                      "faces": len(rows), "found %": 100 * hit.mean(),
                      "MAE photo path": float(np.abs(found["predicted"].to_numpy()[hit] - true[hit]).mean()),
                      "MAE dataset crops": float(crop_error[hit].mean())})
    return pd.DataFrame(table)
