"""Preprocessing: decode every image once into a memory-mapped uint8 cache plus an index table.

One cache per (source, crop, size, subset) lives in ``data/cache/<key>/``:
``images.npy`` (N, S, S, 3) RGB uint8, ``index.csv`` (path, age, gender, subject; row i is image i),
``skipped.csv`` (path, reason) and ``meta.json``. It is rebuilt when the source's files change
and written to a temporary folder that is renamed into place, so an interrupted run never
leaves a half-written cache behind.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import Config, ConfigError
from . import detect, faces, sources, synthetic

CACHE_VERSION = 1
CHUNK = 64
IN_PROCESS_BELOW = 500  # small sets decode faster without starting worker processes


@dataclass
class FaceSet:
    """A preprocessed dataset: ``images[i]`` is the face of ``table.iloc[i]``."""
    source: str
    crop: str
    size: int
    images: np.ndarray
    table: pd.DataFrame
    skipped: pd.DataFrame
    meta: dict
    folder: Path

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ages(self) -> np.ndarray:
        return self.table["age"].to_numpy()

    # A cached array travels to worker processes (data-parallel training) by its file name, so
    # that each maps the same file instead of receiving a copy of every image.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        name = getattr(self.images, "filename", None)
        if name and np.load(name, mmap_mode="r").shape == self.images.shape:
            state["images"] = Path(name)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["images"], Path):
            state["images"] = np.load(state["images"], mmap_mode="r")
        self.__dict__.update(state)


def resolve_crop(crop: str, source: str) -> str:
    """``auto``: AAF's faces are aligned by their landmarks, as ``predict`` aligns a photo's (its
    authors' alignment leaves the eyes' height varying by 8% of the crop), and so are a user's own
    photos (csv and folder sources); AFAD and UTKFace keep their authors' framing."""
    if crop != "auto":
        return crop
    return "aligned" if source in ("aaf", *sources.USER_SOURCES) else "none"


def source_and_crop(cfg: Config) -> tuple[str, str]:
    """The data source and face crop ``cfg.data`` comes to, its ``auto`` values decided."""
    source = sources.pick_source(cfg.data.source, cfg.data_root)
    return source, resolve_crop(cfg.data.crop, source)


def prepare(cfg: Config, progress: bool = True) -> FaceSet:
    """The preprocessed dataset of ``cfg.data``, built on first use and reused after."""
    d = cfg.data
    source, crop = source_and_crop(cfg)
    location = getattr(d, source, "") if source in sources.USER_SOURCES else ""
    found = sources.scan(source, cfg.data_root, d.synthetic_count, d.seed, location)
    table = stratified_subset(found.table, d.subset, d.seed) if d.subset else found.table
    if crop == "aligned" and not detect.available("mtcnn"):
        raise ConfigError("data.crop=aligned (the default for AAF) needs facenet-pytorch: `make setup` installs "
                          "it, or pip install facenet-pytorch==2.5.3; data.crop=face cuts AAF's faces "
                          "by their authors' alignment instead")
    dataset = sources.dataset_key(source, location)
    key = f"{dataset}-{crop}-{d.size}" + (f"-n{d.subset}" if d.subset else "")
    folder = cfg.cache_dir / key
    fingerprint = file_list_hash(table, found.folder)

    cached = _load(folder, fingerprint)
    if cached is not None:
        return cached
    _build(folder, found, table, crop, d.size, d.seed, d.workers, fingerprint, dataset, progress)
    loaded = _load(folder, fingerprint)
    assert loaded is not None, f"cache at {folder} was written but cannot be read back"
    return loaded


def stratified_subset(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A fixed subset of ``n`` rows whose age histogram follows the full table's."""
    if n >= len(table):
        return table
    return table.iloc[stratified_pick(table["age"].to_numpy(), n, seed)].reset_index(drop=True)


def stratified_pick(ages: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` of the ``ages`` spread evenly along the age order (ties broken
    at random), so that the picked ages follow the histogram of all of them."""
    if n >= len(ages):
        return np.arange(len(ages))
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(ages)), ages))
    return np.sort(order[np.linspace(0, len(ages) - 1, n).round().astype(int)])


def file_list_hash(table: pd.DataFrame, folder: Path | None) -> str:
    """Hash of the relative paths, ages and (for real files) sizes: changes when the data does."""
    h = hashlib.sha256()
    for path, age in zip(table["path"], table["age"]):
        size = (folder / path).stat().st_size if folder is not None else 0
        h.update(f"{path}\t{age}\t{size}\n".encode())
    return h.hexdigest()


def _load(folder: Path, fingerprint: str) -> FaceSet | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("file_hash") != fingerprint:
            return None
        images = np.load(folder / "images.npy", mmap_mode="r")
        table = pd.read_csv(folder / "index.csv", dtype={"subject": str}, keep_default_na=False)
        skipped = pd.read_csv(folder / "skipped.csv", keep_default_na=False)
    except (OSError, ValueError, KeyError):
        return None
    if len(images) != len(table):
        return None
    return FaceSet(meta["source"], meta["crop"], meta["size"], images, table, skipped, meta, folder)


def _build(folder, found: sources.Scan, table, crop, size, seed, workers, fingerprint, dataset, progress):
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_cache(tmp, found, table, crop, size, seed, workers, fingerprint, dataset, progress)
        _replace_folder(tmp, folder)
    finally:  # an interrupted build must not leave a (possibly huge) half-written array behind
        shutil.rmtree(tmp, ignore_errors=True)


def _write_cache(tmp, found: sources.Scan, table, crop, size, seed, workers, fingerprint, dataset, progress):
    n = len(table)
    out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    del out  # workers write through their own maps
    jobs = [(str(tmp / "images.npy"), start, _job_rows(table, found, start), found.source, crop, size, seed)
            for start in range(0, n, CHUNK)]
    start_time = time.perf_counter()
    failures: dict[int, str] = {}
    bar = tqdm(total=n, desc=f"preprocess {found.source} {size}px", unit="img", disable=not progress)
    if n < IN_PROCESS_BELOW or workers <= 1:
        results = map(_decode_chunk, jobs)
    else:
        # spawned, not forked: the aligner runs torch, whose thread pool does not survive a fork
        pool = mp.get_context("spawn").Pool(workers, initializer=_one_thread)
        results = pool.imap_unordered(_decode_chunk, jobs)
    for done, failed in results:
        failures.update(failed)
        bar.update(done)
    bar.close()
    if n >= IN_PROCESS_BELOW and workers > 1:
        pool.close()
        pool.join()
    seconds = time.perf_counter() - start_time

    ok = np.array([i not in failures for i in range(n)])
    if not ok.any():
        raise sources.DatasetError(
            f"none of the {n} images of {found.folder} could be decoded "
            f"(e.g. {table['path'].iloc[0]}: {failures.get(0, '?')})")
    if not ok.all():
        _compact(tmp / "images.npy", ok)
    skipped = found.skipped + [(table["path"].iloc[i], reason) for i, reason in sorted(failures.items())]
    table[ok].to_csv(tmp / "index.csv", index=False)
    pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(tmp / "skipped.csv", index=False)
    meta = {"version": CACHE_VERSION, "source": found.source, "dataset": dataset, "crop": crop, "size": size,
            "source_folder": str(found.folder) if found.folder else "", "file_hash": fingerprint,
            "images": int(ok.sum()), "skipped": len(skipped), "seconds": round(seconds, 2),
            "images_per_second": round(n / max(seconds, 1e-9), 1)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def _job_rows(table, found, start):
    rows = table.iloc[start:start + CHUNK]
    base = found.folder
    return [(str(base / p) if base else p, int(a), s) for p, a, s in zip(rows["path"], rows["age"], rows["subject"])]


def _one_thread() -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _decode_chunk(job) -> tuple[int, dict[int, str]]:
    """Decode, crop and resize one chunk straight into the shared cache file."""
    array_path, start, rows, source, crop, size, seed = job
    images = np.load(array_path, mmap_mode="r+")
    failed = {}
    for offset, (path, age, subject) in enumerate(rows):
        try:
            images[start + offset] = _face_image(path, age, subject, source, crop, size, seed)
        except faces.ImageReadError as e:
            failed[start + offset] = str(e)
    images.flush()
    return len(rows), failed


def _face_image(path: str, age: int, subject: str, source: str, crop: str, size: int,
                seed: int) -> np.ndarray:
    if path.startswith("synthetic/"):
        rgb = synthetic.render(path, age, subject, seed)
    else:
        rgb = faces.read_rgb(path, min_side=2 * size)
    if crop == "aligned" and not path.startswith("synthetic/"):
        found = detect.detect(rgb, "mtcnn")
        if found:
            return detect.align(rgb, found[0], size)
        if source != "aaf":
            raise faces.ImageReadError("no face found")
    box = None  # centred square
    if crop in ("face", "aligned") and source == "aaf":  # AAF's authors aligned every face: their box
        box = faces.aligned_face_box(rgb.shape[1], rgb.shape[0])
    elif crop == "face":
        found = detect.detect(rgb, "haar")
        box = detect.framed_box(found[0]) if found else None
    return faces.crop_square(rgb, box, size)


def _compact(array_path: Path, keep: np.ndarray) -> None:
    full = np.load(array_path, mmap_mode="r")
    kept_path = array_path.with_suffix(".kept.npy")
    kept = np.lib.format.open_memmap(kept_path, mode="w+", dtype=np.uint8, shape=(int(keep.sum()),) + full.shape[1:])
    kept[:] = full[keep]
    kept.flush()
    del kept, full
    kept_path.replace(array_path)


def _replace_folder(tmp: Path, folder: Path) -> None:
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
