"""Evaluating checkpoints: one model or an ensemble, with TTA, on the test part of the dataset
they were trained on or, cross-dataset, on every face of another dataset."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import EVAL_PARTS
from ..data import load_split, prepare
from ..data.sources import SOURCE_NAMES, USER_SOURCES
from ..io import atomic_path
from ..model import predict_probs
from ..training import CheckpointError, data_config, load_model
from ..runtime import auto_precision
from .metrics import predictions_table, summary



@dataclass
class Evaluation:
    table: pd.DataFrame          # one row per face (see metrics.predictions_table)
    probs: np.ndarray            # (faces, ages) averaged distributions
    source: str                  # the dataset evaluated on
    trained_on: str              # the dataset the (first) model was trained on
    part: str                    # test | val | train | all
    protocol: str                # split protocol, or "cross-dataset"
    tta: str
    checkpoints: list[str] = field(default_factory=list)
    genders: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))  # per face, as the dataset labels it

    @property
    def cross_dataset(self) -> bool:
        return self.source != self.trained_on

    def summary(self) -> dict[str, float]:
        return summary(self.table)

    def describe(self) -> str:
        s = self.summary()
        models = f"{len(self.checkpoints)}-model ensemble" if len(self.checkpoints) > 1 else "1 model"
        where = (f"all {s['faces']:,} faces of {SOURCE_NAMES.get(self.source, self.source)} (cross-dataset; "
                 f"trained on {SOURCE_NAMES.get(self.trained_on, self.trained_on)})" if self.cross_dataset else
                 f"{s['faces']:,} {self.part} faces of {SOURCE_NAMES.get(self.source, self.source)} "
                 f"(split {self.protocol})")
        return f"MAE {s['MAE']:.3f}, CS@5 {s['CS@5']:.3f} on {where}; TTA {self.tta}; {models}"


def load_ensemble(checkpoints: list[str | Path], device: str | torch.device = "cpu"):
    """(models, config of the first, checkpoint states); members must share the input framing."""
    if not checkpoints:
        raise CheckpointError("no checkpoint given")
    loaded = [load_model(path, device) for path in checkpoints]
    cfg = loaded[0][1]
    for path, (_, other, _) in zip(checkpoints[1:], loaded[1:]):
        if (other.data.size, other.data.crop) != (cfg.data.size, cfg.data.crop):
            raise CheckpointError(f"checkpoint {path} was trained on {other.data.size}px faces "
                                  f"(crop {other.data.crop}), {checkpoints[0]} on {cfg.data.size}px "
                                  f"(crop {cfg.data.crop}); an ensemble needs one input framing")
    return [m for m, _, _ in loaded], cfg, [state for _, _, state in loaded]


def evaluate(checkpoints: list[str | Path], tta: str = "none", source: str | None = None,
             data_root: str | Path | None = None, part: str = "test", device: str | torch.device = "cpu",
             batch_size: int = 128, progress: bool = True, location: str = "") -> Evaluation:
    """Evaluate one checkpoint, or the ensemble of several, with test-time augmentation ``tta``.

    The faces are those of the dataset the first model was trained on, framed and sized as in
    training, and ``part`` of its saved split. With ``source`` naming another dataset the
    evaluation is cross-dataset: every usable face of it counts as test. ``location`` is the CSV
    file or folder of a csv or folder source.
    """
    if part not in EVAL_PARTS:
        raise ValueError(f"part={part!r} is not one of {', '.join(EVAL_PARTS)}")
    models, trained_cfg, states = load_ensemble(checkpoints, device)
    trained_on = states[0].get("data_source") or trained_cfg.data.source
    trained_location = getattr(trained_cfg.data, trained_on) if trained_on in USER_SOURCES else ""
    cross = bool(source) and (source, location) != (trained_on, trained_location or location)
    cfg = data_config(trained_cfg, source or trained_on, data_root, cross=cross, location=location)
    faces = prepare(cfg, progress=progress)
    if cross:
        rows, protocol, part = np.arange(len(faces)), "cross-dataset", "all"
    else:
        split = load_split(faces, cfg)
        rows, protocol = split.part(part), split.protocol
    probs = predict_probs(models, faces.images, rows, tta, trained_cfg.eval.scales, batch_size, device, progress,
                          precision=auto_precision(torch.device(device)))
    table = predictions_table(probs, faces.ages[rows], faces.table["path"].to_numpy()[rows])
    genders = faces.table["gender"].fillna("").astype(str).to_numpy()[rows]
    return Evaluation(table, probs, faces.source, trained_on, part, protocol, tta, [str(c) for c in checkpoints],
                      genders)


def tta_grid(checkpoints: dict[str, str | Path], faces, rows: np.ndarray, modes=("none", "flip", "multi"),
             device: str | torch.device = "cpu", progress: bool = True) -> dict[tuple[str, str], pd.DataFrame]:
    """Predictions of each named checkpoint under each TTA mode, and of their ensemble
    (named "ensemble"), keyed by (model, mode). Each model predicts each mode once; the ensemble
    averages those distributions, as :func:`predict_probs` would."""
    models, cfg, _ = load_ensemble(list(checkpoints.values()), device)
    ages, paths = faces.ages[rows], faces.table["path"].to_numpy()[rows]
    probs = {(name, mode): predict_probs(model, faces.images, rows, mode, cfg.eval.scales, device=device,
                                         progress=progress)
             for mode in modes for name, model in zip(checkpoints, models)}
    if len(models) > 1:
        for mode in modes:
            probs[("ensemble", mode)] = np.mean([probs[(name, mode)] for name in checkpoints], axis=0)
    return {key: predictions_table(p, ages, paths) for key, p in probs.items()}


def save_predictions(evaluation: Evaluation, path: str | Path | None = None, folder: str | Path | None = None) -> Path:
    """Write the per-face predictions as CSV: to ``path``, else into ``folder`` (default: the
    first checkpoint's) under a name that says what was evaluated."""
    if path is None:
        ensemble = f"-ensemble{len(evaluation.checkpoints)}" if len(evaluation.checkpoints) > 1 else ""
        name = f"predictions-{evaluation.source}-{evaluation.part}-tta_{evaluation.tta}{ensemble}.csv"
        path = Path(folder or Path(evaluation.checkpoints[0]).parent) / name
    path = Path(path)
    with atomic_path(path) as tmp:
        evaluation.table.to_csv(tmp, index=False, float_format="%.4f")
    return path
