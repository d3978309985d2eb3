"""Split protocols: partitions, ratios, age stratification, subject grouping, k-fold rotations,
saved splits and what happens when the data changes under them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fadenet.config import ConfigError, load_config
from fadenet.data import FaceSet, SplitError, load_split, prepare, splits

PATTERNS = {"80-10-10": (8, 1, 1), "90-5-5": (18, 1, 1), "72-8-20": (18, 2, 5)}


def table_faces(ages, subjects=None, source="utkface", folder="") -> FaceSet:
    """A FaceSet of a given table (splits look at the table only; the images are dummies)."""
    n = len(ages)
    table = pd.DataFrame({"path": [f"img/{i:05d}.jpg" for i in range(n)], "age": np.asarray(ages, int),
                          "gender": "male", "subject": subjects if subjects is not None else [""] * n})
    return FaceSet(source, "none", 8, np.zeros((n, 1, 1, 3), np.uint8), table,
                   pd.DataFrame(columns=["path", "reason"]), {"source_folder": folder}, Path(folder or "."))


def realistic_ages(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.concatenate([rng.normal(28, 9, n - n // 4), rng.integers(0, 81, n // 4)]), 0, 80).round()


def assert_partition(split, n):
    parts = [set(split.train.tolist()), set(split.val.tolist()), set(split.test.tolist())]
    assert sum(map(len, parts)) == len(split.train) + len(split.val) + len(split.test)  # no duplicates
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(n))
    assert sorted(split.part("all").tolist()) == list(range(n))


@pytest.fixture
def cfg(tmp_path):
    def make(*overrides):
        return load_config("smoke", "data.subset=0", f"data.root={tmp_path}/no-data",
                           f"data.cache_dir={tmp_path}/cache", *overrides)
    return make


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """600 synthetic images: 150 subjects with 4 images each, at ages drawn independently."""
    tmp = tmp_path_factory.mktemp("synth")
    c = load_config("smoke", "data.subset=0", "data.synthetic_count=600", f"data.root={tmp}/no-data",
                    f"data.cache_dir={tmp}/cache")
    return prepare(c, progress=False)


# ---- ratio protocols --------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", list(PATTERNS))
def test_ratio_split_partitions_with_target_shares(cfg, protocol):
    faces = table_faces(realistic_ages(1003))
    split = load_split(faces, cfg(f"data.split={protocol}"))
    assert split.protocol == protocol
    assert_partition(split, 1003)
    pattern = PATTERNS[protocol]
    block = sum(pattern)
    for part, weight in zip((split.train, split.val, split.test), pattern):
        assert abs(len(part) - 1003 * weight / block) <= weight  # exact up to one (the last) block


@pytest.mark.parametrize("protocol", list(PATTERNS))
def test_ratio_split_is_stratified_by_age(cfg, protocol):
    ages = realistic_ages(1000, seed=3)
    faces = table_faces(ages)
    split = load_split(faces, cfg(f"data.split={protocol}"))
    pattern = PATTERNS[protocol]
    share = np.array(pattern) / sum(pattern)
    # every "age <= a" group is a prefix of the age order, dealt in whole blocks: each part holds
    # its share of it up to one block (a random split misses this by several blocks)
    for a in range(0, 81):
        group = ages <= a
        for part, s, w in zip((split.train, split.val, split.test), share, pattern):
            assert abs(group[part].sum() - s * group.sum()) <= w + 1e-9, (a, protocol)
    # and per age decade, within a few points of the target share
    for lo in range(0, 80, 10):
        group = (ages >= lo) & (ages < lo + 10)
        if group.sum() >= 100:
            assert abs(group[split.test].sum() / group.sum() - share[2]) < 0.03


def test_random_assignment_would_fail_the_stratification_check():
    """The check above can fail: an unstratified split of the same ages breaks it."""
    ages = realistic_ages(1000, seed=3)
    test = np.random.default_rng(5).permutation(1000)[:100]
    worst = max(abs((ages <= a)[test].sum() - 0.1 * (ages <= a).sum()) for a in range(81))
    assert worst > 1


def test_subjects_never_straddle_parts(synth, cfg):
    split = load_split(synth, cfg("data.split=80-10-10", "data.synthetic_count=600"))
    assert_partition(split, len(synth))
    subject = synth.table["subject"].to_numpy()
    owners = {}
    for name, rows in (("train", split.train), ("val", split.val), ("test", split.test)):
        for s in set(subject[rows]):
            assert owners.setdefault(s, name) == name, f"subject {s} in {owners[s]} and {name}"
    n_subjects = len(set(subject))
    assert abs(len(set(subject[split.test])) - n_subjects * 0.1) <= 1


def test_splits_are_seeded(cfg, tmp_path):
    faces = table_faces(realistic_ages(500))
    a = load_split(faces, cfg())
    b = load_split(faces, load_config("smoke", "data.subset=0", f"data.cache_dir={tmp_path}/other/cache"))
    assert a.path != b.path
    assert np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val)


# ---- k-fold -----------------------------------------------------------------------------------------
def test_kfold_rotations(synth, cfg):
    n = len(synth)
    rotations = [load_split(synth, cfg("data.split=kfold", f"data.fold={r}", "data.synthetic_count=600"))
                 for r in range(5)]
    assert len({s.path for s in rotations}) == 1  # one saved fold assignment for all rotations
    saved = json.loads(rotations[0].path.read_text())["labels"]
    folds = np.array([saved[p] for p in synth.table["path"]])
    assert sorted(set(folds.tolist())) == list(range(10))
    sizes = np.bincount(folds, minlength=10)
    assert sizes.min() >= 52 and sizes.max() <= 68  # 15 subjects of 4 images in each fold, about
    tests = []
    for r, split in enumerate(rotations):
        assert split.fold == r
        assert_partition(split, n)
        assert set(folds[split.test]) == {2 * r, 2 * r + 1}
        assert set(folds[split.val]) == {(2 * r + 2) % 10, (2 * r + 3) % 10}
        assert len(set(folds[split.train])) == 6
        assert np.array_equal(split.val, rotations[(r + 1) % 5].test)
        tests.append(set(split.test.tolist()))
    for i in range(5):
        for j in range(i + 1, 5):
            assert not tests[i] & tests[j]
    assert set().union(*tests) == set(range(n))


def test_kfold_is_grouped_by_subject(synth, cfg):
    path = load_split(synth, cfg("data.split=kfold", "data.synthetic_count=600")).path
    labels = json.loads(path.read_text())["labels"]
    folds = synth.table["path"].map(labels)
    assert (folds.groupby(synth.table["subject"]).nunique() == 1).all()
    subjects_per_fold = synth.table.assign(fold=folds).groupby("fold")["subject"].nunique()
    assert subjects_per_fold.tolist() == [15] * 10


def test_kfold_is_stratified_without_subjects(cfg):
    ages = realistic_ages(1000, seed=9)
    split = load_split(table_faces(ages), cfg("data.split=kfold", "data.fold=2"))
    for a in range(81):  # the two test folds are 2 of every block of 10 along the ages
        group = ages <= a
        assert abs(group[split.test].sum() - 0.2 * group.sum()) <= 2


# ---- official (AAF lists) ---------------------------------------------------------------------------
def test_official_split_follows_the_lists(fake_aaf, cfg):
    items = [(i, (3 * i) % 81) for i in range(120)]  # even ids in train.txt, odd in val.txt
    root = fake_aaf(items)
    c = cfg("data.source=aaf", "data.split=official", f"data.root={root}", "data.size=32")
    faces = prepare(c, progress=False)
    split = load_split(faces, c)
    assert_partition(split, len(faces))
    lists = {k: {line.split()[0] for line in (root / "All-Age-Faces Dataset" / "image sets" / f"{k}.txt")
                 .read_text().splitlines() if line.strip()} for k in ("train", "val")}
    names = faces.table["path"].str.replace("aglined faces/", "", regex=False).to_numpy()
    assert set(names[split.test]) == lists["val"]
    assert set(names[np.concatenate([split.train, split.val])]) == lists["train"]
    assert abs(len(split.val) - 0.1 * len(lists["train"])) <= 1


def test_official_split_on_another_source_is_a_config_error(cfg):
    with pytest.raises(ConfigError, match="official"):
        load_split(table_faces(realistic_ages(50), source="synthetic"), cfg("data.split=official"))


@pytest.mark.aaf
def test_official_split_on_real_aaf_subset(aaf_subset_root, cfg):
    c = cfg("data.source=aaf", "data.split=official", f"data.root={aaf_subset_root}")
    faces = prepare(c, progress=False)
    split = load_split(faces, c)
    assert_partition(split, len(faces))
    sets = aaf_subset_root / "All-Age-Faces Dataset" / "image sets"
    val = {line.split()[0] for line in (sets / "val.txt").read_text().splitlines() if line.strip()}
    names = faces.table["path"].str.replace("aglined faces/", "", regex=False).to_numpy()
    assert set(names[split.test]) == val
    assert not set(names[split.train]) & val and not set(names[split.val]) & val
    # the held-out validation tenth of train.txt spans its ages
    train_ages = faces.ages[np.concatenate([split.train, split.val])]
    assert abs(np.median(faces.ages[split.val]) - np.median(train_ages)) <= 6
    assert len(split.val) == pytest.approx(0.1 * len(train_ages), abs=1)


@pytest.mark.aaf
def test_ratio_split_on_real_aaf_subset_is_age_stratified(aaf_subset_root, cfg):
    c = cfg("data.source=aaf", f"data.root={aaf_subset_root}")
    faces = prepare(c, progress=False)
    split = load_split(faces, c)
    assert_partition(split, len(faces))
    ages = faces.ages
    for a in range(81):
        group = ages <= a
        assert abs(group[split.train].sum() - 0.8 * group.sum()) <= 8
        assert abs(group[split.test].sum() - 0.1 * group.sum()) <= 1


# ---- saved splits -----------------------------------------------------------------------------------
def test_saved_split_is_reused(cfg):
    faces = table_faces(realistic_ages(300))
    c = cfg("data.split=90-5-5")
    first = load_split(faces, c)
    assert first.path == c.cache_dir.parent / "splits" / "utkface-90-5-5-seed42.json"
    record = json.loads(first.path.read_text())
    assert record["protocol"] == "90-5-5" and record["seed"] == 42 and record["images"] == 300
    assert set(record["labels"]) == set(faces.table["path"])
    again = load_split(faces, c)
    for part in ("train", "val", "test"):
        assert np.array_equal(first.part(part), again.part(part))
    # the file, not a recomputation, decides: an edited assignment is what comes back
    moved = faces.table["path"].iloc[first.train[0]]
    record["labels"][moved] = "test"
    first.path.write_text(json.dumps(record))
    edited = load_split(faces, c)
    assert first.train[0] in edited.test and first.train[0] not in edited.train


def test_added_image_under_a_saved_split_is_an_error(fake_aaf, cfg, image_writer):
    root = fake_aaf([(i, 20 + i) for i in range(12)])
    c = cfg("data.source=aaf", f"data.root={root}", "data.size=32")
    split = load_split(prepare(c, progress=False), c)
    image_writer(root / "All-Age-Faces Dataset" / "aglined faces" / "00500A44.jpg", (50, 60, 70))
    faces = prepare(c, progress=False)
    assert len(faces) == 13
    with pytest.raises(SplitError) as info:
        load_split(faces, c)
    message = str(info.value)
    assert str(split.path) in message and "added" in message and "00500A44.jpg" in message


def test_removed_or_relabelled_image_under_a_saved_split_is_an_error(cfg):
    ages = realistic_ages(100)
    c = cfg()
    path = load_split(table_faces(ages), c).path
    fewer = table_faces(ages)
    fewer.table = fewer.table.drop(index=7).reset_index(drop=True)
    with pytest.raises(SplitError, match="gone") as info:
        load_split(fewer, c)
    assert str(path) in str(info.value)
    relabelled = table_faces(ages)
    relabelled.table.loc[3, "age"] += 1
    with pytest.raises(SplitError, match="different ages"):
        load_split(relabelled, c)


def test_another_split_seed_gives_another_split(cfg):
    faces = table_faces(realistic_ages(400))
    a = load_split(faces, cfg())
    b = load_split(faces, cfg("data.seed=7"))
    assert json.loads(b.path.read_text())["seed"] == 7
    assert not np.array_equal(a.test, b.test)


def test_split_module_constants_match_the_spec():
    assert splits.RATIO_SPLITS == {"80-10-10": (80, 10, 10), "90-5-5": (90, 5, 5), "72-8-20": (72, 8, 20)}
    assert splits.FOLDS == 10
