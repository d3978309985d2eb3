"""Batch prediction: images, folders (searched recursively), videos and a camera, into one CSV.

Every input gets at least one row: a row per face found (per sampled frame, for videos) with
its box, five landmarks, age, standard deviation and calibrated 50% and 90% intervals, or a row
whose ``error`` says why nothing could be predicted (missing, not an image, unreadable, too
large, no face found, not a readable video). A bad input never stops the run. Videos are
sampled every ``every`` seconds; the sampled frames, faces boxed and labelled, are written to
an annotated video beside the CSV; pictures are, when asked, annotated into a folder beside it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..config import ROOT
from ..data.faces import ImageReadError
from ..io import atomic_path, shown_path
from .predictor import AgePredictor, FacePrediction, read_image

log = logging.getLogger("fadenet.predict")

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})
# Landmarks in the picture's pixels; "left" and "right" are the picture's sides, not the person's.
LANDMARKS = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
COLUMNS = ("input", "kind", "frame", "time_s", "face", "framing", "detector", "score", "predicted_age", "std",
           "low_50", "high_50", "low_90", "high_90", "calibrated", "interval", "box_x", "box_y", "box_w", "box_h",
           *(f"{name}_{axis}" for name in LANDMARKS for axis in "xy"), "output", "error")
INTEGER_COLUMNS = ("frame", "face", "low_50", "high_50", "low_90", "high_90", "box_x", "box_y", "box_w", "box_h")
CAMERA_FPS = 25.0  # assumed where a camera does not report its frame rate


@dataclass(frozen=True)
class Source:
    path: str
    kind: str  # image | video | camera | missing


@dataclass
class BatchResult:
    table: pd.DataFrame
    csv: Path
    outputs: list[Path] = field(default_factory=list)  # annotated videos and pictures
    interrupted: bool = False

    def describe(self) -> str:
        t = self.table
        inputs = t["input"].nunique()
        faces = int(t["predicted_age"].notna().sum())
        errors = int(t["error"].fillna("").astype(bool).sum())
        text = (f"{inputs} inputs; faces predicted: {faces}; rows with an error: {errors}; "
                f"CSV {shown_path(self.csv, [('', Path.cwd()), ('', ROOT)])}")
        videos = [v for v in self.outputs if v.suffix == ".mp4"]
        pictures = [v for v in self.outputs if v.suffix != ".mp4"]
        if videos:
            text += "; annotated videos: " + ", ".join(map(str, videos))
        if pictures:
            text += f"; {len(pictures)} annotated pictures in {pictures[0].parent}"
        return text + (" (interrupted: rows so far)" if self.interrupted else "")


def expand_inputs(paths: Sequence[str | Path]) -> list[Source]:
    """The inputs named by ``paths``: files, every file under a folder (sorted, symlinked
    folders not followed), a camera index such as ``0``, or a missing path."""
    sources = []
    for item in map(str, paths):
        path = Path(item)
        if path.is_dir():
            sources += [_file_source(f) for f in _files_under(path)]
        elif path.exists():
            sources.append(_file_source(path))
        elif item.isdigit():
            sources.append(Source(item, "camera"))
        else:
            sources.append(Source(item, "missing"))
    return sources


def _files_under(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [Path(root) / name for name in sorted(files)]
    return found


def _file_source(path: Path) -> Source:
    return Source(str(path), "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image")


def predict_paths(paths: Sequence[str | Path], predictor: AgePredictor, out: str | Path,
                  every: float = 1.0, max_frames: int = 0, whole_image: bool = False,
                  annotate_images: bool = False, progress: bool = True) -> BatchResult:
    """Predict every input of ``paths`` and write the CSV ``out`` (atomically). ``max_frames``
    caps the sampled frames per video or camera (0: all; a camera then runs until Ctrl-C).
    ``whole_image`` predicts the centred square of pictures in which no face is found;
    ``annotate_images`` writes each picture with its faces boxed and labelled to the folder
    ``<csv stem>_annotated`` beside the CSV."""
    out = Path(out)
    sources = expand_inputs(paths)
    rows: list[dict] = []
    named: list[Path] = []
    pictures: set[Path] = set()
    interrupted = False
    try:
        for source in tqdm(sources, desc="predict", unit="input", disable=not progress):
            if source.kind in ("video", "camera"):
                named.append(_video_output(out, source, named))
                new = video_rows(source, predictor, named[-1], every, max_frames, whole_image, progress)
            else:
                target = _image_output(out, source, pictures) if annotate_images else None
                new = image_rows(source, predictor, whole_image, target)
            for row in new:  # row by row, so that an interrupted video keeps its rows so far
                rows.append(row)
    except KeyboardInterrupt:  # Ctrl-C is how a camera run ends; keep what was predicted
        log.warning("interrupted; writing the %d rows predicted so far", len(rows))
        interrupted = True
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype({c: "Int64" for c in INTEGER_COLUMNS})
    write_csv(table, out)
    outputs = [Path(v) for v in dict.fromkeys(table["output"].dropna()) if v and Path(v).is_file()]
    return BatchResult(table, out, outputs, interrupted)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.3f")


def image_rows(source: Source, predictor: AgePredictor, whole_image: bool, target: Path | None = None) -> list[dict]:
    """Rows of one picture; with ``target``, its annotated copy is written there."""
    if source.kind == "missing":
        return [error_row(source, "no such file or folder")]
    try:
        rgb = read_image(source.path)
    except ImageReadError as e:
        return [error_row(source, f"not a readable image: {e}")]
    predictions = predictor.predict_image(rgb, whole_image)
    output = ""
    if target is not None:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        annotate(bgr, predictions)
        output = str(target) if write_image(target, bgr) else ""
    if not predictions:
        return [{**error_row(source, "no face found"), "output": output}]
    return [{**face_row(source, p, i, predictor), "output": output} for i, p in enumerate(predictions)]


def write_image(path: Path, bgr: np.ndarray) -> bool:
    """Write a JPEG atomically; a warning (not a failure) where it cannot be written."""
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data.tobytes())
    except OSError as e:
        log.warning("cannot write the annotated picture %s (%s); its rows are still predicted", path, e)
        return False
    return bool(ok)


def _image_output(out: Path, source: Source, taken: set[Path]) -> Path:
    """``<csv stem>_annotated/<picture stem>.jpg``, numbered when two pictures share a name."""
    folder, stem = out.with_name(f"{out.stem}_annotated"), Path(source.path).stem
    target, number = folder / f"{stem}.jpg", 2
    while target in taken:
        target, number = folder / f"{stem}_{number}.jpg", number + 1
    taken.add(target)
    return target


def video_rows(source: Source, predictor: AgePredictor, target: Path, every: float, max_frames: int,
               whole_image: bool, progress: bool) -> Iterator[dict]:
    """Rows of the sampled frames of a video file or camera; the annotated frames go to ``target``."""
    camera = source.kind == "camera"
    capture = cv2.VideoCapture(int(source.path) if camera else source.path)
    if not capture.isOpened():
        yield error_row(source, f"camera {source.path} could not be opened" if camera else "not a readable video")
        return
    writer = None
    fps = capture.get(cv2.CAP_PROP_FPS) or CAMERA_FPS
    step = max(1, round(every * fps))
    bar = tqdm(total=_sampled_count(capture, step, max_frames), desc=Path(source.path).name, unit="frame",
               leave=False, disable=not progress)
    try:
        for number, bgr in sampled_frames(capture, step, max_frames):
            predictions = predictor.predict_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), whole_image)
            annotate(bgr, predictions)
            if writer is None:
                writer = open_video_writer(target, max(1.0, fps / step), bgr.shape)
            writer.write(bgr)
            frame = {"frame": number, "time_s": number / fps, "output": str(target) if writer.isOpened() else ""}
            yield from ([{**face_row(source, p, i, predictor), **frame} for i, p in enumerate(predictions)]
                        or [{**error_row(source, "no face found"), **frame}])
            bar.update()
    finally:
        bar.close()
        capture.release()
        if writer is not None:
            writer.release()
    if writer is None:
        yield error_row(source, "no frame could be read")


def open_video_writer(path: Path, fps: float, shape: tuple[int, ...]) -> cv2.VideoWriter:
    """An MPEG-4 writer of frames of ``shape``; a warning (not a failure) where none can be opened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (shape[1], shape[0]))
    if not writer.isOpened():
        log.warning("cannot write the annotated video %s; its rows are still predicted", path)
    return writer


def _sampled_count(capture: cv2.VideoCapture, step: int, max_frames: int) -> int | None:
    """How many frames :func:`sampled_frames` will give, where the video says how long it is."""
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    total = -(-int(count) // step) if count > 0 else None
    return min(total, max_frames) if total and max_frames else (total or max_frames or None)


def sampled_frames(capture: cv2.VideoCapture, step: int, max_frames: int) -> Iterator[tuple[int, np.ndarray]]:
    """(frame number, BGR frame) of every ``step``-th frame, at most ``max_frames`` (0: all).
    Frames in between are only grabbed, not converted."""
    number, taken = -1, 0
    while (not max_frames or taken < max_frames) and capture.grab():
        number += 1
        if number % step:
            continue
        ok, bgr = capture.retrieve()
        if not ok:
            break
        taken += 1
        yield number, bgr


def annotate(bgr: np.ndarray, predictions: Sequence[FacePrediction]) -> None:
    """Draw each face's box, landmarks and ``age +- std`` onto the picture, in place."""
    thickness = max(1, round(max(bgr.shape[:2]) / 400))
    for p in predictions:
        left, top, width, height = (int(round(v)) for v in p.face.box)
        colour = (0, 200, 0) if p.detected else (0, 160, 255)
        cv2.rectangle(bgr, (left, top), (left + width, top + height), colour, thickness)
        for x, y in ([] if p.face.landmarks is None else p.face.landmarks):
            cv2.circle(bgr, (int(round(x)), int(round(y))), 2 * thickness, colour, -1)
        label = f"{p.age:.0f} +- {p.std:.0f}"
        scale = 0.5 * thickness
        (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        y = max(text_h + 4, top - 4)
        cv2.rectangle(bgr, (left, y - text_h - 4), (left + text_w + 4, y + 2), colour, -1)
        cv2.putText(bgr, label, (left + 2, y - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)


def interval_kind(predictor: AgePredictor) -> str:
    """How the intervals were made: conformal, temperature (calibrated distribution) or raw."""
    return "conformal" if predictor.conformal else "temperature" if predictor.temperature is not None else "raw"


def face_row(source: Source, p: FacePrediction, index: int, predictor: AgePredictor) -> dict:
    left, top, width, height = p.face.box
    row = {"input": source.path, "kind": source.kind, "face": index,
           "framing": "detected face" if p.detected else "whole image",
           "detector": predictor.detector if p.detected else "", "score": p.face.score if p.detected else None,
           "predicted_age": p.age, "std": p.std, "calibrated": predictor.temperature is not None,
           "interval": interval_kind(predictor),
           "box_x": round(left), "box_y": round(top), "box_w": round(width), "box_h": round(height), "error": ""}
    for mass in (0.5, 0.9):
        row[f"low_{mass * 100:.0f}"], row[f"high_{mass * 100:.0f}"] = p.interval(mass)
    if p.face.landmarks is not None:
        for name, (x, y) in zip(LANDMARKS, p.face.landmarks):
            row[f"{name}_x"], row[f"{name}_y"] = x, y
    return row


def error_row(source: Source, reason: str) -> dict:
    return {"input": source.path, "kind": source.kind, "error": reason}


def _video_output(out: Path, source: Source, taken: list[Path]) -> Path:
    """``<csv stem>_<video stem>.mp4`` beside the CSV, numbered when two videos share a name."""
    stem = f"camera{source.path}" if source.kind == "camera" else Path(source.path).stem
    target = out.with_name(f"{out.stem}_{stem}.mp4")
    number = 2
    while target in taken:
        target = out.with_name(f"{out.stem}_{stem}_{number}.mp4")
        number += 1
    return target
