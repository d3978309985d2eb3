"""Dataset sources, the preprocessing cache and bad inputs (chapter 01, first half)."""
from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fadenet.config import ConfigError
from fadenet.data import DatasetError, cache, faces, prepare, sources, synthetic
from fadenet.data.cache import stratified_subset

SMALL = 40  # side of the fake images


def by_path(table: pd.DataFrame) -> dict[str, tuple]:
    return {r.path: (int(r.age), r.gender) for r in table.itertuples()}


def reasons(skipped) -> dict[str, str]:
    if isinstance(skipped, pd.DataFrame):
        return dict(zip(skipped["path"], skipped["reason"]))
    return dict(skipped)


# ---- sources: AFAD --------------------------------------------------------------------------------
@pytest.fixture
def afad_tree(tmp_path, image_writer):
    root = tmp_path / "data"
    base = root / "AFAD-Full"
    good = {"25/111/a.jpg": (25, "male"), "25/112/b.jpg": (25, "female"), "3/111/c.jpg": (3, "male"),
            "80/112/d.jpg": (80, "female"), "0/111/e.jpg": (0, "male")}
    bad = ["abc/111/f.jpg", "30/113/g.jpg", "30/h.jpg", "30/111/deeper/i.jpg", "81/111/j.jpg", "95/112/k.jpg"]
    for i, rel in enumerate(list(good) + bad):
        image_writer(base / rel, (20 * i, 100, 200), size=SMALL)
    (base / "25" / "111" / ".DS_Store").write_bytes(b"\0")
    return root, good


def test_afad_scanner_parses_ages_and_genders(afad_tree):
    root, good = afad_tree
    found = sources.scan("afad", root)
    assert found.folder == root / "AFAD-Full"
    assert list(found.table.columns) == ["path", "age", "gender", "subject"]
    assert by_path(found.table) == good
    assert list(found.table["path"]) == sorted(good)  # sorted, stable row order
    assert (found.table["subject"] == "").all()
    why = reasons(found.skipped)
    assert "not a number" in why["abc/111/f.jpg"]
    assert "113" in why["30/113/g.jpg"]
    assert "inside an <age>/<111|112>/ folder" in why["30/h.jpg"]
    assert "inside" in why["30/111/deeper/i.jpg"]
    assert "age 81 outside 0..80" == why["81/111/j.jpg"]
    assert "age 95" in why["95/112/k.jpg"]
    assert not any(".DS_Store" in p for p in why) and ".DS_Store" not in "".join(found.table["path"])


def test_afad_lite_uses_the_same_layout(tmp_path, image_writer):
    image_writer(tmp_path / "AFAD-Lite" / "40" / "112" / "x.jpg", (1, 2, 3), size=SMALL)
    found = sources.scan("afad_lite", tmp_path)
    assert by_path(found.table) == {"40/112/x.jpg": (40, "female")}


# ---- sources: UTKFace and AAF ---------------------------------------------------------------------
def test_utkface_names(tmp_path, image_writer):
    names = {"25_0_2_20170116174525125.jpg.chip.jpg": (25, "male"),
             "3_1_0_20170109150557335.jpg.chip.jpg": (3, "female"),
             "61_0_1_20170117174842387.jpg": (61, "male")}
    bad = ["39_1_20170116174525125.jpg.chip.jpg",      # race missing (a known UTKFace quirk)
           "x_0_1_20170117174842387.jpg.chip.jpg", "25_2_0_20170116174525125.jpg.chip.jpg"]
    too_old = "100_1_0_20170112213303693.jpg.chip.jpg"
    for name in list(names) + bad + [too_old]:
        image_writer(tmp_path / "UTKFace" / name, (90, 90, 90), size=SMALL)
    found = sources.scan("utkface", tmp_path)
    assert by_path(found.table) == names
    why = reasons(found.skipped)
    assert set(why) == set(bad) | {too_old}
    assert all("does not match" in why[b] for b in bad)
    assert "age 100" in why[too_old]


def test_aaf_names_and_gender_by_id(tmp_path, image_writer):
    images = tmp_path / "All-Age-Faces Dataset" / "aglined faces"
    names = {"00000A02.jpg": (2, "female"), "07380A30.jpg": (30, "female"), "07381A30.jpg": (30, "male"),
             "13321A80.jpg": (80, "male"), "00100A00.jpg": (0, "female"), "09999a45.JPG": (45, "male")}
    bad = ["1234A05.jpg", "00012A5.jpg", "00012B05.jpg", "readme.txt"]
    for name in list(names) + bad + ["00200A85.jpg"]:
        image_writer(images / name, (120, 80, 60), size=SMALL, fmt="JPEG")
    found = sources.scan("aaf", tmp_path)
    assert by_path(found.table) == {f"aglined faces/{n}": v for n, v in names.items()}
    why = reasons(found.skipped)
    assert set(why) == {f"aglined faces/{n}" for n in bad + ["00200A85.jpg"]}
    assert "age 85" in why["aglined faces/00200A85.jpg"]
    assert "does not match" in why["aglined faces/readme.txt"]


def test_aaf_official_lists(tmp_path, fake_aaf):
    root = fake_aaf([(0, 20), (1, 30), (2, 40), (7, 50)])
    lists = sources.aaf_official_lists(root / "All-Age-Faces Dataset")
    assert lists == {"train": {"aglined faces/00000A20.jpg", "aglined faces/00002A40.jpg"},
                     "val": {"aglined faces/00001A30.jpg", "aglined faces/00007A50.jpg"}}
    (root / "All-Age-Faces Dataset" / "image sets" / "val.txt").unlink()
    with pytest.raises(DatasetError, match="val.txt"):
        sources.aaf_official_lists(root / "All-Age-Faces Dataset")


# ---- sources: missing, empty, unknown ---------------------------------------------------------------
@pytest.mark.parametrize("source", ["afad", "aaf", "utkface"])
def test_missing_dataset_names_the_path(tmp_path, source):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        sources.scan(source, root)
    assert str(root / sources.FOLDERS[source]) in str(info.value)


def test_missing_dataset_through_prepare(cfg_factory, tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=str(root)):
        prepare(cfg_factory("data.source=aaf", root=root), progress=False)


def test_empty_datasets_name_the_path(tmp_path, image_writer):
    (tmp_path / "AFAD-Full").mkdir()
    with pytest.raises(DatasetError, match=str(tmp_path / "AFAD-Full")):
        sources.scan("afad", tmp_path)
    (tmp_path / "All-Age-Faces Dataset").mkdir()
    with pytest.raises(DatasetError, match="aglined faces"):
        sources.scan("aaf", tmp_path)
    (tmp_path / "All-Age-Faces Dataset" / "aglined faces").mkdir()
    with pytest.raises(DatasetError, match=str(tmp_path / "All-Age-Faces Dataset")):
        sources.scan("aaf", tmp_path)
    # files, but none usable: the message says why, with an example
    image_writer(tmp_path / "UTKFace" / "holiday.jpg", (1, 1, 1), size=SMALL)
    with pytest.raises(DatasetError) as info:
        sources.scan("utkface", tmp_path)
    assert str(tmp_path / "UTKFace") in str(info.value) and "holiday.jpg" in str(info.value)


def test_unknown_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="celeba"):
        sources.scan("celeba", tmp_path)


def test_pick_source_auto_order(tmp_path, image_writer):
    assert sources.pick_source("auto", tmp_path / "nowhere") == "synthetic"
    assert sources.pick_source("auto", tmp_path) == "synthetic"
    (tmp_path / "AFAD-Full").mkdir()  # an empty folder does not count
    assert sources.pick_source("auto", tmp_path) == "synthetic"
    image_writer(tmp_path / "UTKFace" / "25_0_2_20170116174525125.jpg.chip.jpg", (1, 2, 3), size=SMALL)
    assert sources.pick_source("auto", tmp_path) == "utkface"
    image_writer(tmp_path / "All-Age-Faces Dataset" / "aglined faces" / "00001A20.jpg", (1, 2, 3), size=SMALL)
    assert sources.pick_source("auto", tmp_path) == "aaf"
    image_writer(tmp_path / "AFAD-Full" / "20" / "111" / "a.jpg", (1, 2, 3), size=SMALL)
    assert sources.pick_source("auto", tmp_path) == "afad"
    assert sources.pick_source("utkface", tmp_path) == "utkface"  # explicit choices are kept
    assert sources.pick_source("synthetic", tmp_path) == "synthetic"


def test_auto_source_through_config(cfg_factory, fake_aaf):
    root = fake_aaf([(i, 20 + i) for i in range(6)])
    fs = prepare(cfg_factory(root=root), progress=False)
    assert fs.source == "aaf" and fs.crop == "aligned" and len(fs) == 6
    fs = prepare(cfg_factory("data.subset=0", "data.synthetic_count=40"), progress=False)
    assert fs.source == "synthetic" and fs.crop == "none" and len(fs) == 40


# ---- bad images -------------------------------------------------------------------------------------
def make_noise_jpeg(path, seed=0, side=96):
    rgb = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=90)
    return path


@pytest.fixture
def afad_with_bad_files(tmp_path, image_writer):
    """An AFAD tree with good PNGs of known colours, readable odd formats and unreadable files."""
    base = tmp_path / "data" / "AFAD-Full"
    colours = {}
    for i in range(14):  # good images, several chunks of 4 and several ages
        rel = f"{20 + i % 5}/{'111' if i % 2 else '112'}/good{i:02d}.png"
        colours[rel] = (10 + 17 * i, 250 - 15 * i, (90 * i) % 256)
        image_writer(base / rel, colours[rel], size=SMALL)
    unreadable = {}
    unreadable["30/112/corrupt.jpg"] = random.Random(1).randbytes(3000)
    unreadable["30/111/zero.jpg"] = b""
    real = make_noise_jpeg(tmp_path / "noise.jpg").read_bytes()
    unreadable["31/111/truncated.jpg"] = real[:len(real) // 2]
    unreadable["22/112/notes.txt"] = b"these are my notes, not an image\n"
    unreadable["33/111/fake.png"] = b"\x89PNG\r\n\x1a\n" + b"\0" * 50
    for rel, data in unreadable.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    # readable oddities
    rgba = np.zeros((SMALL, SMALL, 4), np.uint8)
    rgba[:, SMALL // 2:] = (0, 0, 255, 255)          # right half opaque blue, left half transparent
    (base / "40" / "112").mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(base / "40" / "112" / "alpha.png")
    (base / "41" / "111").mkdir(parents=True)
    Image.new("L", (SMALL, SMALL), 100).save(base / "41" / "111" / "gray.jpg", quality=95)
    (base / "42" / "112").mkdir(parents=True)
    Image.new("RGB", (SMALL, SMALL), (200, 60, 30)).convert("CMYK").save(base / "42" / "112" / "cmyk.jpg", quality=95)
    return tmp_path / "data", colours, unreadable


@pytest.mark.parametrize("mode", ["in-process", "worker-processes"])
def test_bad_files_are_skipped_and_labels_stay_aligned(afad_with_bad_files, cfg_factory, monkeypatch, mode):
    root, colours, unreadable = afad_with_bad_files
    monkeypatch.setattr(cache, "CHUNK", 4)  # failures fall in several chunks: compaction must keep order
    if mode == "worker-processes":
        monkeypatch.setattr(cache, "IN_PROCESS_BELOW", 0)
    cfg = cfg_factory("data.source=afad", "data.subset=0", "data.size=32", "data.workers=2", root=root)
    fs = prepare(cfg, progress=False)

    why = reasons(fs.skipped)
    assert set(why) == set(unreadable)
    assert all(isinstance(r, str) and r for r in why.values())
    assert "truncated" in why["31/111/truncated.jpg"]
    kept = set(fs.table["path"])
    assert kept == set(colours) | {"40/112/alpha.png", "41/111/gray.jpg", "42/112/cmyk.jpg"}
    assert fs.images.shape == (len(kept), 32, 32, 3) and fs.images.dtype == np.uint8
    assert fs.meta["images"] == len(kept) and fs.meta["skipped"] == len(unreadable)

    for i, row in enumerate(fs.table.itertuples()):
        assert row.age == int(row.path.split("/")[0])
        assert row.gender == ("male" if row.path.split("/")[1] == "111" else "female")
        if row.path in colours:  # lossless PNGs of one colour: exact pixels, so row i is image i
            assert (fs.images[i] == colours[row.path]).all(), row.path

    img = dict(zip(fs.table["path"], range(len(fs))))
    alpha = fs.images[img["40/112/alpha.png"]]
    assert (alpha[:, :14] == 255).all()                       # transparency composited on white
    assert (alpha[:, 18:] == (0, 0, 255)).all()
    gray = fs.images[img["41/111/gray.jpg"]].astype(int)
    assert np.abs(gray - 100).max() <= 2                      # grayscale becomes 3 equal channels
    cmyk = fs.images[img["42/112/cmyk.jpg"]].astype(int)
    assert np.abs(cmyk - (200, 60, 30)).max() <= 6           # CMYK converted, not inverted


def test_bad_files_in_aaf(fake_aaf, cfg_factory, tmp_path):
    root = fake_aaf([(i, 10 + 7 * i) for i in range(8)])
    images = root / "All-Age-Faces Dataset" / "aglined faces"
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[:, 50:] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(images / "00020A33.jpg", format="PNG")  # a PNG named .jpg
    (images / "00021A34.jpg").write_bytes(random.Random(2).randbytes(500))
    (images / "00022A35.jpg").write_bytes(b"")
    real = make_noise_jpeg(tmp_path / "noise.jpg").read_bytes()
    (images / "00023A36.jpg").write_bytes(real[: len(real) // 3])
    (images / "notes.txt").write_text("hello")
    fs = prepare(cfg_factory("data.source=aaf", "data.subset=0", root=root), progress=False)
    why = reasons(fs.skipped)
    assert set(why) == {f"aglined faces/{n}" for n in ("00021A34.jpg", "00022A35.jpg", "00023A36.jpg", "notes.txt")}
    assert len(fs) == 9
    row = fs.table.index[fs.table["path"] == "aglined faces/00020A33.jpg"][0]
    assert fs.table.loc[row, "age"] == 33
    face = fs.images[row]
    # AAF face box: x from 0.5w - 0.385w to 0.5w + 0.385w, so the left third of the crop is white
    assert (face[:, :20] == 255).all() and (face[:, 40:] == (255, 0, 0)).all()
    for i in range(8):  # solid colours survive the face crop; rows still match their files
        r = fs.table.index[fs.table["path"] == f"aglined faces/{i:05d}A{10 + 7 * i:02d}.jpg"][0]
        assert np.abs(fs.images[r].astype(int) - fake_aaf.colour_of(i)).max() <= 3


def test_nothing_decodable_is_a_dataset_error(tmp_path, cfg_factory):
    base = tmp_path / "data" / "AFAD-Full" / "20" / "111"
    base.mkdir(parents=True)
    for k in range(3):
        (base / f"{k}.jpg").write_bytes(random.Random(k).randbytes(100))
    with pytest.raises(DatasetError, match=str(tmp_path / "data" / "AFAD-Full")):
        prepare(cfg_factory("data.source=afad", root=tmp_path / "data"), progress=False)
    cache_dir = tmp_path / "cache"
    assert not cache_dir.exists() or not [p for p in cache_dir.iterdir() if not p.name.startswith(".")]


def test_read_rgb_errors_are_image_read_errors(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"GIF89a-broken")
    with pytest.raises(faces.ImageReadError):
        faces.read_rgb(tmp_path / "a.jpg")
    with pytest.raises(faces.ImageReadError):
        faces.read_rgb(tmp_path / "missing.jpg")


# ---- cache: reuse, rebuild, atomicity --------------------------------------------------------------
def test_second_prepare_reuses_the_cache(cfg_factory, monkeypatch):
    cfg = cfg_factory("data.synthetic_count=120", "data.subset=0")
    first = prepare(cfg, progress=False)
    stat = (first.folder / "images.npy").stat()
    pixels = np.array(first.images)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache, "_build", no_rebuild)
    second = prepare(cfg, progress=False)
    assert second.folder == first.folder == cfg.cache_dir / "synthetic-none-64"
    assert second.meta == first.meta
    assert (second.folder / "images.npy").stat().st_mtime_ns == stat.st_mtime_ns
    assert (second.folder / "images.npy").stat().st_ino == stat.st_ino
    assert np.array_equal(np.asarray(second.images), pixels)
    pd.testing.assert_frame_equal(second.table, first.table)
    assert set(json.loads((first.folder / "meta.json").read_text())) >= {"file_hash", "source", "size", "images"}


def test_cache_keys_separate_sizes_and_subsets(cfg_factory):
    a = prepare(cfg_factory("data.synthetic_count=60", "data.subset=0"), progress=False)
    b = prepare(cfg_factory("data.synthetic_count=60", "data.subset=0", "data.size=32"), progress=False)
    c = prepare(cfg_factory("data.synthetic_count=60", "data.subset=30"), progress=False)
    assert len({a.folder, b.folder, c.folder}) == 3
    assert a.images.shape == (60, 64, 64, 3) and b.images.shape == (60, 32, 32, 3) and len(c) == 30
    assert (a.folder / "meta.json").is_file()  # building b and c did not replace a


def test_changed_file_list_rebuilds(fake_aaf, cfg_factory, image_writer):
    root = fake_aaf([(i, 20 + i) for i in range(6)])
    images = root / "All-Age-Faces Dataset" / "aglined faces"
    cfg = cfg_factory("data.source=aaf", root=root)
    first = prepare(cfg, progress=False)
    assert len(first) == 6

    image_writer(images / "00050A61.jpg", (200, 200, 20))        # an image added
    added = prepare(cfg, progress=False)
    assert len(added) == 7 and added.meta["file_hash"] != first.meta["file_hash"]
    row = added.table.index[added.table["path"] == "aglined faces/00050A61.jpg"][0]
    assert added.table.loc[row, "age"] == 61
    assert np.abs(added.images[row].astype(int) - (200, 200, 20)).max() <= 3

    (images / "00000A20.jpg").unlink()                             # an image removed
    removed = prepare(cfg, progress=False)
    assert len(removed) == 6 and "aglined faces/00000A20.jpg" not in set(removed.table["path"])

    target = images / "00003A23.jpg"                               # an image replaced (new size)
    make_noise_jpeg(target, seed=3, side=120)
    replaced = prepare(cfg, progress=False)
    assert replaced.meta["file_hash"] != removed.meta["file_hash"]
    row = replaced.table.index[replaced.table["path"] == "aglined faces/00003A23.jpg"][0]
    assert replaced.images[row].std() > 20  # noise now, a solid colour before


def test_cache_folder_is_written_atomically(cfg_factory):
    cfg = cfg_factory("data.synthetic_count=80", "data.subset=0")
    fs = prepare(cfg, progress=False)
    assert sorted(p.name for p in cfg.cache_dir.iterdir()) == [fs.folder.name]
    assert sorted(p.name for p in fs.folder.iterdir()) == ["images.npy", "index.csv", "meta.json", "skipped.csv"]


def interrupt_after(monkeypatch, calls: int):
    real = cache._face_image
    count = {"n": 0}

    def face_image(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "_face_image", face_image)


def test_interrupted_build_leaves_no_cache(cfg_factory, monkeypatch):
    cfg = cfg_factory("data.synthetic_count=150", "data.subset=0")
    interrupt_after(monkeypatch, 70)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, progress=False)
    final = cfg.cache_dir / "synthetic-none-64"
    assert not final.exists()
    monkeypatch.undo()
    fs = prepare(cfg, progress=False)  # the next run builds a complete cache
    assert len(fs) == 150 and fs.images.shape[0] == 150
    assert not [p for p in cfg.cache_dir.iterdir() if p.name.startswith(".")]


def test_interrupted_rebuild_keeps_the_old_cache(fake_aaf, cfg_factory, monkeypatch, image_writer):
    root = fake_aaf([(i, 30 + i) for i in range(5)])
    cfg = cfg_factory("data.source=aaf", root=root)
    old = prepare(cfg, progress=False)
    meta = (old.folder / "meta.json").read_text()
    image_writer(root / "All-Age-Faces Dataset" / "aglined faces" / "00099A50.jpg", (9, 9, 9))
    interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, progress=False)
    assert (old.folder / "meta.json").read_text() == meta
    assert len(np.load(old.folder / "images.npy", mmap_mode="r")) == 5 == len(pd.read_csv(old.folder / "index.csv"))
    monkeypatch.undo()
    assert len(prepare(cfg, progress=False)) == 6


def test_interrupted_build_cleans_its_temporary_folder(cfg_factory, monkeypatch):
    cfg = cfg_factory("data.synthetic_count=100", "data.subset=0")
    interrupt_after(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, progress=False)
    assert not list(cfg.cache_dir.glob(".*"))


# ---- synthetic source ---------------------------------------------------------------------------
def test_synthetic_is_deterministic(cfg_factory, tmp_path):
    a = prepare(cfg_factory("data.synthetic_count=48", "data.subset=0"), progress=False)
    b = prepare(cfg_factory("data.synthetic_count=48", "data.subset=0", f"data.cache_dir={tmp_path}/other"),
                progress=False)
    assert a.folder != b.folder
    assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    pd.testing.assert_frame_equal(a.table, b.table)
    c = prepare(cfg_factory("data.synthetic_count=48", "data.subset=0", "data.seed=7",
                            f"data.cache_dir={tmp_path}/seed7"), progress=False)
    assert not np.array_equal(np.asarray(a.images), np.asarray(c.images))
    assert not np.array_equal(a.ages, c.ages)
    one = synthetic.render("synthetic/00003.png", 30, "s00000", 42)
    assert one.shape == (synthetic.RENDER_SIZE,) * 2 + (3,) and one.dtype == np.uint8
    assert np.array_equal(one, synthetic.render("synthetic/00003.png", 30, "s00000", 42))


def test_synthetic_table_shape():
    t = synthetic.synthetic_table(20, 42)
    assert list(t.columns) == ["path", "age", "gender", "subject"]
    assert t["age"].between(0, 80).all() and set(t["gender"]) <= {"male", "female"}
    counts = t["subject"].value_counts()
    assert (counts == synthetic.IMAGES_PER_SUBJECT).all()  # each subject at several ages
    assert (t.groupby("subject")["gender"].nunique() == 1).all()


def test_synthetic_age_is_visible(cfg_factory):
    fs = prepare(cfg_factory("data.synthetic_count=400", "data.subset=0"), progress=False)
    images, ages = np.asarray(fs.images, dtype=float), fs.ages
    young, old = images[ages <= 10].mean(0), images[ages >= 60].mean(0)
    assert (ages <= 10).sum() >= 20 and (ages >= 60).sum() >= 20
    # hair greys with age: the band above the forehead is brighter in old faces
    assert old[8:24].mean() - young[8:24].mean() > 15
    # a control: two halves with the same age mix differ far less than young and old
    idx = np.random.default_rng(0).permutation(len(images))
    half_a, half_b = images[idx[::2]].mean(0), images[idx[1::2]].mean(0)
    assert np.abs(young - old).mean() > 3 * np.abs(half_a - half_b).mean()


# ---- subsets --------------------------------------------------------------------------------------
def test_stratified_subset_keeps_age_distribution_and_is_fixed():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"path": [f"{i:05d}.jpg" for i in range(3000)],
                          "age": np.concatenate([rng.integers(0, 20, 2000), rng.integers(50, 81, 1000)]),
                          "gender": "male", "subject": ""})
    sub = stratified_subset(table, 300, 42)
    assert len(sub) == 300 and sub["path"].is_unique
    assert set(sub["path"]) <= set(table["path"])
    assert abs((sub["age"] < 20).mean() - 2 / 3) < 0.01
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    assert np.allclose(sub["age"].quantile(qs), table["age"].quantile(qs), atol=2)
    assert sub.equals(stratified_subset(table, 300, 42))
    assert not sub.equals(stratified_subset(table, 300, 7))
    assert stratified_subset(table, 5000, 42) is table


# ---- real All-Age-Faces -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aaf_faces(aaf_subset_root, tmp_path_factory):
    from fadenet.config import load_config
    cache_dir = tmp_path_factory.mktemp("aaf_cache") / "cache"
    cfg = load_config("smoke", "data.source=aaf", "data.subset=0", f"data.root={aaf_subset_root}",
                      f"data.cache_dir={cache_dir}", "data.crop=face")
    return prepare(cfg, progress=False), aaf_subset_root


@pytest.mark.aaf
def test_real_aaf_prepares_with_names_as_labels(aaf_faces):
    fs, root = aaf_faces
    files = sorted(p.name for p in (root / "All-Age-Faces Dataset" / "aglined faces").iterdir())
    assert 200 <= len(files) <= 260
    assert len(fs) == len(files) and len(fs.skipped) == 0
    assert fs.images.shape == (len(files), 64, 64, 3) and fs.crop == "face" and fs.source == "aaf"
    assert list(fs.table["path"]) == [f"aglined faces/{f}" for f in files]
    for name, age, gender in zip(files, fs.table["age"], fs.table["gender"]):
        assert age == int(name[6:8])
        assert gender == ("female" if int(name[:5]) <= 7380 else "male")
    assert fs.ages.min() <= 5 and fs.ages.max() >= 70  # the subset spans the ages
    assert set(fs.table["gender"]) == {"female", "male"}


# The documented AAF framing (fadenet/data/faces.py): the median Haar box of eye-aligned AAF faces,
# centred at (0.50, 0.58) of width and height, side 0.70 of the width, times the 1.1 face margin.
DOCUMENTED_AAF_BOX = (0.50, 0.58, 0.70 * 1.1)


@pytest.mark.aaf
def test_real_aaf_crop_is_the_aligned_face_box(aaf_faces):
    fs, root = aaf_faces
    assert faces.AAF_BOX == (0.50, 0.58, 0.70) and faces.FACE_MARGIN == 1.1
    cx, cy, side = DOCUMENTED_AAF_BOX
    for i in np.linspace(0, len(fs) - 1, 6).astype(int):
        file = root / "All-Age-Faces Dataset" / fs.table["path"].iloc[i]
        cached = fs.images[i].astype(int)
        # exactly what preprocessing does: JPEG decoded at reduced size (>= 2x the output side)
        small = faces.read_rgb(file, min_side=128)
        sh, sw = small.shape[:2]
        assert faces.aligned_face_box(sw, sh) == pytest.approx((cx * sw, cy * sh, side * sw))
        assert np.array_equal(cached, faces.crop_square(small, (cx * sw, cy * sh, side * sw), 64))
        # and close to the documented box cut from the full-resolution image ...
        full = faces.read_rgb(file)
        h, w = full.shape[:2]
        assert max(h, w) > 2 * max(sh, sw) - 2  # (the draft decode did reduce the image)

        def framed(bx, by, bside):
            return faces.crop_square(full, (bx * w, by * h, bside * w), 64).astype(int)

        close = np.abs(cached - framed(cx, cy, side)).mean()  # draft decoding, rounding: a few levels
        assert close < 8
        # ... while framings 3% off, or the plain centred square, are far from it
        others = [framed(cx, cy - 0.03, side), framed(cx, cy + 0.03, side), framed(cx - 0.03, cy, side),
                  framed(cx + 0.03, cy, side), framed(cx, cy, side - 0.07), framed(cx, cy, side + 0.08),
                  faces.crop_square(full, None, 64).astype(int)]
        for other in others:
            assert np.abs(cached - other).mean() > max(2 * close, 10)


@pytest.mark.aaf
def test_real_aaf_faces_are_aligned_by_their_landmarks_by_default(aaf_subset_root, tmp_path):
    from fadenet.config import load_config
    from fadenet.data import detect
    cfg = load_config("smoke", "data.source=aaf", "data.subset=0", f"data.root={aaf_subset_root}",
                      f"data.cache_dir={tmp_path / 'cache'}")
    fs = prepare(cfg, progress=False)
    assert fs.crop == "aligned" and len(fs.skipped) == 0
    for i in np.linspace(0, len(fs) - 1, 5).astype(int):
        file = aaf_subset_root / "All-Age-Faces Dataset" / fs.table["path"].iloc[i]
        small = faces.read_rgb(file, min_side=128)  # as preprocessing decodes it
        found = detect.detect(small, "mtcnn")
        expected = detect.align(small, found[0], 64) if found else faces.crop_square(
            small, faces.aligned_face_box(small.shape[1], small.shape[0]), 64)
        np.testing.assert_array_equal(fs.images[i], expected)


@pytest.mark.aaf
def test_real_aaf_stratified_subset_keeps_ages(aaf_root):
    full = sources.scan("aaf", aaf_root).table
    assert len(full) == 13322
    sub = stratified_subset(full, 300, 42)
    assert len(sub) == 300 and sub["path"].is_unique
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    assert np.allclose(sub["age"].quantile(qs), full["age"].quantile(qs), atol=1.5)
    bins = [0, 10, 20, 30, 40, 50, 60, 81]
    share_full = pd.cut(full["age"], bins, right=False).value_counts(normalize=True).sort_index()
    share_sub = pd.cut(sub["age"], bins, right=False).value_counts(normalize=True).sort_index()
    assert np.abs(share_full.to_numpy() - share_sub.to_numpy()).max() < 0.02
