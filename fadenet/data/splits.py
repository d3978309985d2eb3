"""Split protocols. A split is made once, saved as JSON with a hash of the file list it was
made from, and reused; if the dataset changes under a saved split, that is an error rather
than a silent re-split (which would leak test images into training between runs).

Protocols:
- ``80-10-10`` (the paper's), ``90-5-5``, ``72-8-20``: train/val/test stratified by age.
- ``official``: AAF's own lists. They have no validation set, so an age-stratified 10% of
  ``train.txt`` is held out for validation (model selection); ``val.txt`` is the test set.
- ``kfold``: 10 age-stratified folds; rotation r (``data.fold``) tests on folds 2r and 2r+1,
  validates on the next two and trains on the other six, as the CVPR 2024 unified benchmark.
Where the source knows subjects, all images of a subject fall in the same part.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import RATIO_SPLITS, Config, ConfigError
from ..io import atomic_write_text
from . import sources
from .cache import FaceSet

PARTS = ("train", "val", "test")
FOLDS = 10
OFFICIAL_VAL_SHARE = (90, 10, 0)


class SplitError(RuntimeError):
    """A saved split that no longer matches its dataset; the message names the file."""


@dataclass
class Split:
    protocol: str
    fold: int
    train: np.ndarray  # row indices into the FaceSet
    val: np.ndarray
    test: np.ndarray
    path: Path

    def part(self, name: str) -> np.ndarray:
        return {"train": self.train, "val": self.val, "test": self.test, "all": np.concatenate(
            [self.train, self.val, self.test])}[name]


def load_split(faces: FaceSet, cfg: Config) -> Split:
    """The split of ``cfg.data.split`` over ``faces``, made on first use and reused after."""
    protocol, seed = cfg.data.split, cfg.data.seed
    # one file per dataset (source, subset, synthetic size) and split (protocol, seed)
    dataset = faces.meta.get("dataset", faces.source) + (f"{cfg.data.synthetic_count}" if faces.source == "synthetic" else "")
    name = dataset + (f"-n{cfg.data.subset}" if cfg.data.subset else "") + f"-{protocol}-seed{seed}.json"
    path = cfg.cache_dir.parent / "splits" / name
    paths = faces.table["path"].tolist()
    fingerprint = _rows_hash(faces)
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved["file_hash"] != fingerprint:
            raise SplitError(_changed_message(path, saved["labels"], paths))
        labels = saved["labels"]
    else:
        labels = dict(zip(paths, _assign(faces, protocol, seed).tolist()))
        record = {"protocol": protocol, "seed": seed, "source": faces.source, "images": len(paths),
                  "file_hash": fingerprint, "labels": labels}
        atomic_write_text(path, json.dumps(record))
    row_labels = np.array([labels[p] for p in paths], dtype=object)
    return _split_from_labels(row_labels, protocol, cfg.data.fold, path)


def _split_from_labels(labels: np.ndarray, protocol: str, fold: int, path: Path) -> Split:
    if protocol == "kfold":
        folds = labels.astype(int)
        test_folds = {2 * fold, 2 * fold + 1}
        val_folds = {(2 * fold + 2) % FOLDS, (2 * fold + 3) % FOLDS}
        parts = np.where(np.isin(folds, list(test_folds)), "test",
                         np.where(np.isin(folds, list(val_folds)), "val", "train"))
    else:
        parts = labels
    idx = {p: np.flatnonzero(parts == p) for p in PARTS}
    return Split(protocol, fold, idx["train"], idx["val"], idx["test"], path)


def _assign(faces: FaceSet, protocol: str, seed: int) -> np.ndarray:
    """One label per row: 'train'/'val'/'test' (or '' for unused rows), or a fold number."""
    table = faces.table
    if protocol in RATIO_SPLITS:
        return _stratified(table, RATIO_SPLITS[protocol], PARTS, seed)
    if protocol == "kfold":
        return _stratified(table, (1,) * FOLDS, tuple(range(FOLDS)), seed)
    if protocol == "official":
        return _official(faces, seed)
    raise ConfigError(f"data.split={protocol!r} is not a known protocol")


def _stratified(table, weights: tuple[int, ...], labels: tuple, seed: int) -> np.ndarray:
    """Deal labels in proportion to ``weights`` along the rows sorted by age.

    Units (subjects where known, else single images) are sorted by age, randomly within an age,
    and cut into consecutive blocks; each block receives the labels in the exact proportions,
    in a random order. Every age range therefore gets each label in proportion, and the
    global shares are exact up to one block.
    """
    g = math.gcd(*weights)
    pattern = np.repeat(np.arange(len(weights)), [w // g for w in weights])
    unit_of_row = _units(table)
    unit_ages = pd.Series(table["age"].to_numpy(float)).groupby(unit_of_row).median().to_numpy()
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(unit_ages)), unit_ages))
    unit_label = np.empty(len(unit_ages), dtype=int)
    for start in range(0, len(order), len(pattern)):
        block = order[start:start + len(pattern)]
        unit_label[block] = rng.permutation(pattern)[:len(block)]
    return np.array(labels, dtype=object)[unit_label[unit_of_row]]


def _units(table) -> np.ndarray:
    """Unit number of each row: rows of one subject share a unit; a row without a subject is its own."""
    keys = [s if s else f"row:{i}" for i, s in enumerate(table["subject"].astype(str))]
    return np.unique(np.array(keys), return_inverse=True)[1]


def _official(faces: FaceSet, seed: int) -> np.ndarray:
    if faces.source != "aaf":
        raise ConfigError(f"data.split=official exists only for AAF (aaf), not for {faces.source}")
    lists = sources.aaf_official_lists(Path(faces.meta["source_folder"]))
    paths = faces.table["path"]
    labels = np.full(len(paths), "", dtype=object)
    in_train = paths.isin(lists["train"]).to_numpy()
    labels[paths.isin(lists["val"]).to_numpy()] = "test"
    labels[in_train] = _stratified(faces.table[in_train].reset_index(drop=True), OFFICIAL_VAL_SHARE,
                                   PARTS, seed)
    return labels


def _rows_hash(faces: FaceSet) -> str:
    h = hashlib.sha256()
    for path, age in zip(faces.table["path"], faces.table["age"]):
        h.update(f"{path}\t{age}\n".encode())
    return h.hexdigest()


def _changed_message(path: Path, saved_labels: dict, paths: list[str]) -> str:
    saved, now = set(saved_labels), set(paths)
    added, removed = sorted(now - saved), sorted(saved - now)
    detail = []
    if added:
        detail.append(f"{len(added)} image(s) added, e.g. {added[0]}")
    if removed:
        detail.append(f"{len(removed)} image(s) gone, e.g. {removed[0]}")
    if not detail:
        detail.append("the same files with different ages")
    return (f"the dataset changed under the saved split {path}: {'; '.join(detail)}. "
            "Delete that file to make a new split (results made with the old one are then not comparable).")
