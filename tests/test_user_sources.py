"""A user's own photos as a dataset: a CSV of path,age or a folder of <age>/<image>, prepared
like predict prepares a photo (faces found and aligned), bad rows skipped with their reasons."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fadenet import cli
from fadenet.config import ConfigError, load_config
from fadenet.data import DatasetError, load_split, prepare, sources
from fadenet.data.cache import resolve_crop

pytestmark = pytest.mark.usefixtures("one_thread")


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_csv_rows_with_bad_values_are_skipped_with_their_line(tmp_path, image_writer):
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg", "sub/e.jpg"):
        image_writer(tmp_path / "photos" / name, (90, 90, 90))
    csv = write_csv(tmp_path / "photos" / "list.csv",
                    "path,age,subject\n"
                    "a.jpg,31,anna\n"
                    "b.jpg,thirty,ben\n"        # not a number
                    "missing.jpg,20,\n"         # no such file
                    "c.jpg,95,\n"               # outside 0..80
                    "d.jpg,40.5,\n"             # not whole years
                    f"{tmp_path / 'photos' / 'sub' / 'e.jpg'},7,\n")  # absolute path
    found = sources.scan("csv", tmp_path, location=str(csv))
    assert sorted(found.table[["path", "age", "subject"]].values.tolist()) == sorted([
        ["a.jpg", 31, "anna"], [str(tmp_path / "photos" / "sub" / "e.jpg"), 7, ""]])
    reasons = dict(found.skipped)
    assert reasons["b.jpg"] == "line 3: age 'thirty' is not a number"
    assert reasons["missing.jpg"] == "line 4: no such file"
    assert reasons["c.jpg"] == "age 95 outside 0..80"
    assert reasons["d.jpg"] == "line 6: age 40.5 is not a whole number of years"


@pytest.mark.parametrize("text, message", [
    ("file,age\na.jpg,3\n", "lacks the column path (it has: file, age)"),
    ("path\na.jpg\n", "lacks the column age (it has: path)"),
    ("", "is not a readable CSV"),
])
def test_a_csv_without_its_columns_is_one_clear_error(tmp_path, text, message):
    csv = write_csv(tmp_path / "list.csv", text)
    with pytest.raises(DatasetError, match=re.escape(message)) as error:
        sources.scan("csv", tmp_path, location=str(csv))
    assert str(csv) in str(error.value)


def test_missing_csv_or_folder_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=f"data.csv {tmp_path / 'none.csv'} does not exist"):
        sources.scan("csv", tmp_path, location=str(tmp_path / "none.csv"))
    with pytest.raises(DatasetError, match=f"data.folder {tmp_path / 'nothing'} is not a folder"):
        sources.scan("folder", tmp_path, location=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="data.source=csv needs data.csv=<path>"):
        load_config("smoke", "data.source=csv")


def test_age_folders_and_a_link_loop(tmp_path, image_writer):
    root = tmp_path / "mine"
    image_writer(root / "25" / "x.jpg", (10, 20, 30))
    image_writer(root / "3" / "y.png", (10, 20, 30))
    image_writer(root / "old" / "z.jpg", (10, 20, 30))
    image_writer(root / "loose.jpg", (10, 20, 30))
    image_writer(root / "40" / "deeper" / "w.jpg", (10, 20, 30))
    os.symlink(root, root / "25" / "loop")  # a folder link back to the top: never followed
    found = sources.scan("folder", tmp_path, location=str(root))
    assert found.table[["path", "age"]].values.tolist() == [["25/x.jpg", 25], ["3/y.png", 3]]
    assert dict(found.skipped) == {"40/deeper/w.jpg": "not inside an <age>/ folder",
                                   "loose.jpg": "not inside an <age>/ folder",
                                   "old/z.jpg": "age folder 'old' is not a number"}


def test_user_sources_are_aligned_and_kept_apart_in_the_cache(tmp_path, cfg_factory, image_writer):
    assert resolve_crop("auto", "csv") == resolve_crop("auto", "folder") == "aligned"
    assert sources.dataset_key("csv", str(tmp_path / "a.csv")) != sources.dataset_key("csv", str(tmp_path / "b.csv"))
    assert sources.dataset_key("aaf") == "aaf"


@pytest.fixture(scope="module")
def user_photos(aaf_root, tmp_path_factory):
    """60 real AAF pictures as a user would hand them over: a CSV beside them, and the same
    pictures sorted into <age>/ folders; plus one picture without a face."""
    base = tmp_path_factory.mktemp("user")
    files = sorted((aaf_root / "All-Age-Faces Dataset" / "aglined faces").iterdir())[::222][:60]
    lines = ["path,age"]
    for file in files:
        age = int(file.name[6:8])
        shutil.copy(file, base / file.name)
        (base / "byage" / str(age)).mkdir(parents=True, exist_ok=True)
        shutil.copy(file, base / "byage" / str(age) / file.name)
        lines.append(f"{file.name},{age}")
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (120, 120), (200, 120, 40)).save(base / "wall.jpg")
    lines.append("wall.jpg,30")
    (base / "faces.csv").write_text("\n".join(lines) + "\n")
    return base


@pytest.mark.aaf
@pytest.mark.slow
def test_train_and_evaluate_on_a_users_csv_and_folder(user_photos, tmp_path, capsys):
    common = [f"data.cache_dir={tmp_path / 'cache'}", f"runs_dir={tmp_path / 'runs'}", "data.size=64",
              "train.epochs=1", "train.batch_size=16", "data.split=80-10-10"]
    csv_cfg = load_config("smoke", "data.source=csv", f"data.csv={user_photos / 'faces.csv'}", *common)
    faces = prepare(csv_cfg, progress=False)
    assert faces.crop == "aligned" and len(faces) == 60
    assert faces.skipped.values.tolist() == [["wall.jpg", "no face found"]]
    split = load_split(faces, csv_cfg)
    assert len(split.train) + len(split.val) + len(split.test) == 60
    assert cli.main(["train", "--profile", "smoke", *csv_cfg_overrides(csv_cfg)]) == 0
    checkpoint = next((tmp_path / "runs").glob("smoke-*/best.pt"))
    # the folder of the same pictures, evaluated cross-dataset: every face of it is a test face
    assert cli.main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "folder",
                     "--folder", str(user_photos / "byage"), "--out", str(tmp_path / "folder.csv")]) == 0
    out = capsys.readouterr().out
    assert "on all 60 faces of your folder of faces (cross-dataset; trained on your CSV of faces)" in out
    table = pd.read_csv(tmp_path / "folder.csv")
    assert len(table) == 60 and np.isfinite(table["predicted_age"]).all()
    assert sorted(table["true_age"]) == sorted(faces.ages)
    # --dataset csv without --csv is one clear error
    assert cli.main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "csv"]) == 2


def csv_cfg_overrides(cfg) -> list[str]:
    return ["data.source=csv", f"data.csv={cfg.data.csv}", f"data.cache_dir={cfg.data.cache_dir}",
            f"runs_dir={cfg.runs_dir}", f"data.size={cfg.data.size}", "train.epochs=1", "train.batch_size=16"]
