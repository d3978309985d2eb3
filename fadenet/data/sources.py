"""Dataset sources. Each scanner turns a dataset folder into one table with the columns
``path`` (relative to the source folder), ``age``, ``gender`` and ``subject`` (empty where the
source does not know who is who), plus the files it could not use and why."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import ConfigError

NUM_AGES = 81  # ages 0..80
AGE_GROUP_EDGES = (0, 10, 20, 30, 40, 50, 60, 70, NUM_AGES)
AGE_GROUPS = tuple(f"{a}-{b - 1}" for a, b in zip(AGE_GROUP_EDGES[:-1], AGE_GROUP_EDGES[1:]))
COLUMNS = ["path", "age", "gender", "subject"]

# Folder of each source under the data root, as its authors distribute it.
FOLDERS = {
    "afad": "AFAD-Full",
    "afad_lite": "AFAD-Lite",
    "aaf": "All-Age-Faces Dataset",
    "utkface": "UTKFace",
}
AUTO_ORDER = ("afad", "aaf", "utkface")
# How captions and tables name each source.
SOURCE_NAMES = {
    "afad": "AFAD-Full", "afad_lite": "AFAD-Lite", "aaf": "All-Age-Faces (AAF)", "utkface": "UTKFace",
    "synthetic": "SYNTHETIC procedural faces (not real people)",
    "csv": "your CSV of faces", "folder": "your folder of faces",
}
USER_SOURCES = ("csv", "folder")  # a user's own photos: found and aligned like predict's

AAF_NAME = re.compile(r"^(\d{5})A(\d{2})\.jpe?g$", re.IGNORECASE)
AAF_LAST_FEMALE_ID = 7380  # ids 00000-07380 are female, 07381-13321 male
UTKFACE_NAME = re.compile(r"^(\d{1,3})_([01])_(\d)_(\d{8,})\.jpg(\.chip\.jpg)?$", re.IGNORECASE)


class DatasetError(RuntimeError):
    """A dataset that cannot be used at all (missing, empty); the message names the path."""


@dataclass
class Scan:
    source: str
    folder: Path | None
    table: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def age_group(ages) -> pd.Categorical:
    """Decade groups 0-9 ... 70-80 used by every per-age-group table."""
    return pd.cut(pd.Series(ages), AGE_GROUP_EDGES, right=False, labels=AGE_GROUPS)


def source_folder(source: str, data_root: Path) -> Path:
    return data_root / FOLDERS[source]


def pick_source(source: str, data_root: Path) -> str:
    """Resolve ``auto``: AFAD, then AAF, then UTKFace when present under the root, else synthetic."""
    if source != "auto":
        return source
    for name in AUTO_ORDER:
        if _has_files(source_folder(name, data_root)):
            return name
    return "synthetic"


def user_path(text: str) -> Path:
    """A path a user typed (``data.csv``, ``data.folder``): ``~`` expanded, relative to the
    current folder."""
    return Path(text).expanduser().resolve()


def dataset_key(source: str, location: str = "") -> str:
    """The name of a dataset's cache and split files: the source, and for a user's CSV or
    folder a short hash of where it is (two lists must not share a cache)."""
    if source not in USER_SOURCES:
        return source
    return f"{source}-{hashlib.sha256(str(user_path(location)).encode()).hexdigest()[:8]}"


def scan(source: str, data_root: Path, synthetic_count: int = 2000, seed: int = 42, location: str = "") -> Scan:
    """The table of ``source``; ``location`` is the CSV file or folder of the user's sources."""
    if source == "synthetic":
        from .synthetic import synthetic_table
        return Scan("synthetic", None, synthetic_table(synthetic_count, seed))
    if source == "csv":
        folder, (rows, skipped) = user_path(location).parent, scan_csv(user_path(location))
    elif source == "folder":
        folder = user_path(location)
        if not folder.is_dir():
            raise DatasetError(f"data.folder {folder} is not a folder")
        rows, skipped = scan_age_folders(folder)
    elif source in FOLDERS:
        folder = source_folder(source, data_root)
        if not folder.is_dir():
            raise DatasetError(f"{source} dataset not found: {folder} does not exist "
                               f"(set data.root or FADENET_DATA_ROOT to the folder that holds {FOLDERS[source]!r})")
        rows, skipped = SCANNERS[source](folder)
    else:
        raise ConfigError(f"data.source={source!r} has no scanner")
    rows, skipped = _keep_known_ages(*_keep_text_names(rows, skipped))
    if not rows:
        raise DatasetError(f"{source} dataset at {folder} holds no usable images"
                           + (f" ({len(skipped)} files skipped, e.g. {skipped[0][0]}: {skipped[0][1]})"
                              if skipped else ""))
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values("path", ignore_index=True)
    return Scan(source, folder, table, skipped)


def _keep_text_names(rows, skipped):
    """File names that are not valid UTF-8 (Python holds their odd bytes as surrogates) cannot
    be written to the cache's index; they are skipped, shown with those bytes escaped."""
    def readable(name: str) -> str:
        return os.fsencode(name).decode("utf-8", "backslashreplace")

    def is_text(name: str) -> bool:
        return readable(name) == name
    kept = [r for r in rows if is_text(r[0])]
    dropped = [(readable(r[0]), "file name is not valid UTF-8; rename the file") for r in rows if not is_text(r[0])]
    return kept, [(readable(path), reason) for path, reason in skipped] + dropped


def _keep_known_ages(rows, skipped):
    kept = [r for r in rows if 0 <= r[1] < NUM_AGES]
    dropped = [(r[0], f"age {r[1]} outside 0..{NUM_AGES - 1}") for r in rows if not 0 <= r[1] < NUM_AGES]
    return kept, skipped + dropped


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def _files(folder: Path):
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def scan_afad(folder: Path):
    """``<age>/<111|112>/<file>.jpg``; 111 is male, 112 female."""
    rows, skipped = [], []
    gender_codes = {"111": "male", "112": "female"}
    for p in _files(folder):
        rel = p.relative_to(folder)
        parts = rel.parts
        if len(parts) != 3:
            skipped.append((str(rel), "not inside an <age>/<111|112>/ folder"))
        elif not parts[0].isdigit():
            skipped.append((str(rel), f"age folder {parts[0]!r} is not a number"))
        elif parts[1] not in gender_codes:
            skipped.append((str(rel), f"gender folder {parts[1]!r} is not 111 or 112"))
        else:
            rows.append((str(rel), int(parts[0]), gender_codes[parts[1]], ""))
    return rows, skipped


def scan_aaf(folder: Path):
    """``aglined faces/<5-digit id>A<2-digit age>.jpg`` (the folder's spelling is the dataset's)."""
    images = folder / "aglined faces"
    if not images.is_dir():
        raise DatasetError(f"All-Age-Faces folder {folder} has no 'aglined faces' subfolder")
    rows, skipped = [], []
    for p in _files(images):
        rel = str(p.relative_to(folder))
        m = AAF_NAME.match(p.name)
        if not m:
            skipped.append((rel, "file name does not match <5-digit id>A<2-digit age>.jpg"))
            continue
        gender = "female" if int(m.group(1)) <= AAF_LAST_FEMALE_ID else "male"
        rows.append((rel, int(m.group(2)), gender, ""))
    return rows, skipped


def scan_utkface(folder: Path):
    """``<age>_<gender>_<race>_<datetime>.jpg.chip.jpg``; gender 0 is male, 1 female."""
    rows, skipped = [], []
    for p in _files(folder):
        rel = str(p.relative_to(folder))
        m = UTKFACE_NAME.match(p.name)
        if not m:
            skipped.append((rel, "file name does not match <age>_<gender>_<race>_<datetime>.jpg.chip.jpg"))
            continue
        rows.append((rel, int(m.group(1)), "male" if m.group(2) == "0" else "female", ""))
    return rows, skipped


CSV_COLUMNS = ("path", "age")  # required; subject and gender are optional


def scan_csv(path: Path):
    """A user's CSV: one row per image with its ``path`` (absolute, or relative to the CSV's
    folder) and ``age`` in whole years; optional ``subject`` (faces of one person stay on one
    side of a split) and ``gender``."""
    if not path.is_file():
        raise DatasetError(f"data.csv {path} does not exist")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DatasetError(f"data.csv {path} is not a readable CSV: {str(e).splitlines()[0]}") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(f"data.csv {path} lacks the column{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(missing)} (it has: {', '.join(table.columns) or 'none'})")
    rows, skipped = [], []
    for line, record in enumerate(table.to_dict("records"), start=2):  # line 1 is the header
        name, age = record["path"].strip(), record["age"].strip()
        try:
            years = float(age)
        except ValueError:
            skipped.append((name or f"line {line}", f"line {line}: age {age!r} is not a number"))
            continue
        if not name or not (path.parent / name).is_file():
            skipped.append((name or f"line {line}", f"line {line}: no such file"))
        elif years != round(years):
            skipped.append((name, f"line {line}: age {age} is not a whole number of years"))
        else:
            rows.append((name, int(years), record.get("gender", "").strip(), record.get("subject", "").strip()))
    return rows, skipped


def scan_age_folders(folder: Path):
    """``<folder>/<age>/<image>``: the age is the name of the image's folder. Links to folders
    are not followed (a link loop cannot trap the scan)."""
    rows, skipped = [], []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            rel = (Path(root) / name).relative_to(folder)
            if name.startswith("."):
                continue
            if len(rel.parts) != 2:
                skipped.append((str(rel), "not inside an <age>/ folder"))
            elif not rel.parts[0].isdigit():
                skipped.append((str(rel), f"age folder {rel.parts[0]!r} is not a number"))
            else:
                rows.append((str(rel), int(rel.parts[0]), "", ""))
    return rows, skipped


SCANNERS = {"afad": scan_afad, "afad_lite": scan_afad, "aaf": scan_aaf, "utkface": scan_utkface}


def aaf_official_lists(folder: Path) -> dict[str, set[str]]:
    """AAF's own split: ``image sets/train.txt`` and ``val.txt``, a ``<file> <gender>`` a line."""
    lists = {}
    for name in ("train", "val"):
        path = folder / "image sets" / f"{name}.txt"
        if not path.is_file():
            raise DatasetError(f"AAF official split list {path} is missing")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"AAF official split list {path} is not a text file ({e.reason} at byte {e.start})") from None
        lists[name] = {f"aglined faces/{line.split()[0]}" for line in text.splitlines() if line.strip()}
    return lists
