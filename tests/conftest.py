"""Shared fixtures of the test suite.

Real data: tests marked ``aaf`` use the All-Age-Faces dataset found through $FADENET_DATA_ROOT
(the folder that holds ``All-Age-Faces Dataset``; .ci/run sets it); they are skipped, saying
why, when it is not given.

Configurations: ``cfg_factory`` makes smoke-profile configs whose cache (and so split files)
live in the test's own temporary folder, never in the repository's ``data/``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fadenet.config import load_config

AAF_FOLDER = "All-Age-Faces Dataset"
AAF_SUBSET_STEP = 55  # every 55th AAF file by sorted name: ~240 images across all ages


# ---- fast and slow ------------------------------------------------------------------------------
# Fixtures that train a model: every test that uses one is marked slow, so that `make test-fast`
# (-m "not slow ...") is the suite without training.
TRAINING_FIXTURES = {"smoke_run", "smoke_checkpoint", "predictor", "explorer", "trained"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# ---- seeds ------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same seeds, so that its random inputs are the same on every
    run and in any order of tests."""
    import random

    import torch
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# ---- real data ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def aaf_root() -> Path:
    """The data root that holds the real ``All-Age-Faces Dataset`` folder (skips if absent)."""
    env = os.environ.get("FADENET_DATA_ROOT")
    if not env:
        pytest.skip(f"All-Age-Faces data not given: set FADENET_DATA_ROOT to the folder that holds {AAF_FOLDER!r}")
    root = Path(env)
    if not (root / AAF_FOLDER / "aglined faces").is_dir():
        pytest.skip(f"All-Age-Faces data not found: {root / AAF_FOLDER / 'aglined faces'} does not exist")
    return root


@pytest.fixture(scope="session")
def aaf_subset_root(aaf_root: Path, tmp_path_factory) -> Path:
    """A data root with a fixed, age-spread subset of the real AAF images (symlinks) and the
    official split lists filtered to them. Built once per session."""
    real = aaf_root / AAF_FOLDER
    root = tmp_path_factory.mktemp("aaf_subset")
    images = root / AAF_FOLDER / "aglined faces"
    lists = root / AAF_FOLDER / "image sets"
    images.mkdir(parents=True)
    lists.mkdir(parents=True)
    names = sorted(p.name for p in (real / "aglined faces").iterdir() if p.is_file())[::AAF_SUBSET_STEP]
    for name in names:
        (images / name).symlink_to(real / "aglined faces" / name)
    keep = set(names)
    for split in ("train", "val"):
        lines = (real / "image sets" / f"{split}.txt").read_text().splitlines()
        kept = [line for line in lines if line.split() and line.split()[0] in keep]
        (lists / f"{split}.txt").write_text("\n".join(kept) + "\n")
    return root


# ---- ImageNet weights ---------------------------------------------------------------------
MBV2_FILE = "mobilenet_v2-b0353104.pth"  # torchvision's MobileNetV2 IMAGENET1K_V1


@pytest.fixture
def mbv2_torch_home(tmp_path, monkeypatch) -> Path:
    """A fresh $TORCH_HOME holding only the MobileNetV2 ImageNet file from $FADENET_WEIGHTS_DIR
    (.ci/run sets it); skipped, saying why, when it is not given."""
    folder = os.environ.get("FADENET_WEIGHTS_DIR")
    if not folder or not (Path(folder) / MBV2_FILE).is_file():
        pytest.skip(f"set FADENET_WEIGHTS_DIR to a folder holding {MBV2_FILE} "
                    f"({'not given' if not folder else 'absent from ' + folder})")
    home = tmp_path / "torch"
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(Path(folder) / MBV2_FILE, checkpoints / MBV2_FILE)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


# ---- threads --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tiny forward passes gain nothing from a second one, and
    on a busy 2-core machine a second thread mostly waits. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- configurations -------------------------------------------------------------------------
@pytest.fixture
def cfg_factory(tmp_path: Path):
    """``make(*overrides, profile="smoke", root=None)`` -> Config with the cache in tmp_path.

    ``root`` defaults to an empty folder, so that ``data.source=auto`` means synthetic whatever
    $FADENET_DATA_ROOT says; pass a data root (or a ``data.root=`` override) to use real files.
    """
    empty = tmp_path / "no-data"
    empty.mkdir(exist_ok=True)

    def make(*overrides: str, profile: str = "smoke", root: Path | str | None = None):
        return load_config(profile, f"data.root={root or empty}", f"data.cache_dir={tmp_path}/cache",
                           *overrides)

    return make


# ---- small fake datasets --------------------------------------------------------------------
@pytest.fixture
def image_writer():
    """``write(path, rgb, size=48, fmt=None)``: see :func:`write_image`."""
    return write_image


def write_image(path: Path, rgb, size: int = 48, fmt: str | None = None) -> Path:
    """Write a solid-colour (``rgb`` a triple) or given (``rgb`` an array) RGB image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim == 1:
        arr = np.broadcast_to(arr, (size, size, 3))
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format=fmt or ("PNG" if path.suffix == ".png" else "JPEG"),
                                                    **({"quality": 95} if path.suffix != ".png" else {}))
    return path


@pytest.fixture
def fake_aaf(tmp_path: Path):
    """``make(items, root=None)``: a fake All-Age-Faces tree of solid-colour JPEGs.

    ``items`` is a list of (id, age) pairs; image i has colour ``make.colour_of(i)``. Even ids go to
    ``train.txt``, odd ids to ``val.txt``. Returns the data root.
    """

    def make(items, root: Path | None = None) -> Path:
        root = root or tmp_path / "fake-data"
        folder = root / AAF_FOLDER
        lines = {"train": [], "val": []}
        for i, (ident, age) in enumerate(items):
            name = f"{ident:05d}A{age:02d}.jpg"
            write_image(folder / "aglined faces" / name, colour_of(i))
            lines["train" if ident % 2 == 0 else "val"].append(f"{name} {int(ident > 7380)}")
        (folder / "image sets").mkdir(parents=True, exist_ok=True)
        for split, rows in lines.items():
            (folder / "image sets" / f"{split}.txt").write_text("\n".join(rows) + "\n")
        return root

    make.colour_of = colour_of
    return make


def colour_of(i: int) -> tuple[int, int, int]:
    """A distinct, JPEG-stable colour per index (channels far apart in steps of 30)."""
    return (30 + 30 * (i % 7), 30 + 30 * ((i // 7) % 7), 30 + 30 * ((i // 49) % 7))
