"""Image files and list files a real dataset or a user's folder holds, beyond the common ones in
test_data.py: each is read with the right pixels, or skipped with a reason, or refused with one
clear error; never a crash in the middle of a build."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fadenet.data import faces, prepare
from fadenet.data.sources import DatasetError, aaf_official_lists

SMALL = 48


def _png(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


# ---- pixels of odd formats --------------------------------------------------------------------

def test_a_palette_png_with_transparency_is_composited_on_white(tmp_path):
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    im.paste(0, (0, 0, 4, 8))             # left half: palette entry 0, declared transparent
    rgb = faces.read_rgb(_png(tmp_path / "p.png", im, transparency=0))
    assert (rgb[:, :4] == 255).all() and (rgb[:, 4:] == (200, 30, 40)).all()


def test_a_gray_image_with_alpha_is_composited_on_white(tmp_path):
    gray = np.full((8, 8), 60, np.uint8)
    alpha = np.zeros((8, 8), np.uint8)
    alpha[:, 4:] = 255
    im = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    rgb = faces.read_rgb(_png(tmp_path / "la.png", im))
    assert (rgb[:, :4] == 255).all() and (rgb[:, 4:] == 60).all()


def test_a_16_bit_png_is_scaled_to_8_bits(tmp_path):
    values = np.zeros((4, 8), np.uint16)
    values[:, 4:] = 60000
    values[:, 2:4] = 30000
    rgb = faces.read_rgb(_png(tmp_path / "deep.png", Image.fromarray(values)))
    assert rgb.shape == (4, 8, 3)
    assert (rgb[:, :2] == 0).all() and (rgb[:, 4:] == 255).all() and (np.abs(rgb[:, 2:4].astype(int) - 127) <= 1).all()


def test_an_exif_rotated_jpeg_is_read_upright(tmp_path):
    pixels = np.zeros((40, 80, 3), np.uint8)    # wide: red left, blue right
    pixels[:, :40] = (255, 0, 0)
    pixels[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6                             # "rotate 90 degrees clockwise to display"
    path = _png(tmp_path / "phone.jpg", Image.fromarray(pixels), quality=95, exif=exif.tobytes())
    rgb = faces.read_rgb(path).astype(int)
    assert rgb.shape == (80, 40, 3)                              # shown tall
    assert np.abs(rgb[5, 20] - (255, 0, 0)).max() < 40           # the left edge is now the top
    assert np.abs(rgb[75, 20] - (0, 0, 255)).max() < 40


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP"])
def test_other_formats_under_a_jpg_name_are_read_by_their_content(tmp_path, fmt):
    im = Image.new("RGB", (16, 16), (0, 128, 255))
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    rgb = faces.read_rgb(_png(tmp_path / "really.jpg", im, format=fmt, **kwargs)).astype(int)
    assert np.abs(rgb - (0, 128, 255)).max() <= 3


def test_of_an_animated_gif_the_first_frame_is_read(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    rgb = faces.read_rgb(path).astype(int)
    assert np.abs(rgb - (255, 0, 0)).max() <= 3


def test_an_unreadable_file_is_an_image_read_error_naming_why(tmp_path, monkeypatch):
    path = _png(tmp_path / "locked.png", Image.new("RGB", (8, 8)))
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads any file: make the read fail as it would for a user
        real_open = Image.open

        def refuse(p, *a, **k):
            if Path(p) == path:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(p, *a, **k)
        monkeypatch.setattr(faces.Image, "open", refuse)
    with pytest.raises(faces.ImageReadError, match="Permission denied"):
        faces.read_rgb(path)


# ---- a dataset build with odd files ----------------------------------------------------------

@pytest.fixture
def odd_afad(tmp_path, image_writer):
    """An AFAD tree of good images plus a 1-pixel, a 1x4000 and an over-large image, a
    non-UTF-8 file name, a negative age folder and an unreadable file."""
    base = tmp_path / "data" / "AFAD-Full"
    for i in range(6):
        image_writer(base / f"{20 + i}/111/good{i}.png", (20 * i, 100, 200), size=SMALL)
    _png(base / "30/112/one-pixel.png", Image.new("RGB", (1, 1), (9, 200, 9)))
    _png(base / "31/112/line.png", Image.new("RGB", (1, 4000), (200, 9, 9)))
    _png(base / "32/111/bomb.png", Image.new("1", (9000, 9000)))      # 81 M pixels, 10 KB on disk
    odd_name = os.fsdecode(b"caf\xe9-latin1.png")                        # not valid UTF-8
    image_writer(base / "33/111" / odd_name, (50, 60, 70), size=SMALL)
    image_writer(base / "-3/111/negative.png", (1, 2, 3), size=SMALL)
    locked = image_writer(base / "34/112/locked.png", (5, 5, 5), size=SMALL)
    return tmp_path / "data", odd_name, locked


def test_odd_files_are_kept_with_their_pixels_or_skipped_with_a_reason(odd_afad, cfg_factory, monkeypatch):
    root, odd_name, locked = odd_afad
    real_read = faces.read_rgb

    def read(path, *a, **k):
        if Path(path) == locked:
            raise faces.ImageReadError("Permission denied")
        return real_read(path, *a, **k)
    monkeypatch.setattr(faces, "read_rgb", read)
    fs = prepare(cfg_factory("data.source=afad", "data.subset=0", "data.size=32", root=root), progress=False)
    skipped = dict(zip(fs.skipped["path"], fs.skipped["reason"]))
    assert "larger than" in skipped["32/111/bomb.png"]
    assert "is not a number" in skipped["-3/111/negative.png"]
    assert "Permission denied" in skipped["34/112/locked.png"]
    kept = dict(zip(fs.table["path"], range(len(fs))))
    assert (fs.images[kept["30/112/one-pixel.png"]] == (9, 200, 9)).all()   # one pixel, scaled up
    assert (fs.images[kept["31/112/line.png"]] == (200, 9, 9)).all()
    assert "not valid UTF-8" in skipped["33/111/caf\\xe9-latin1.png"]  # named with its odd byte escaped
    assert len(fs) == 6 + 2 and fs.meta["skipped"] == 4


# ---- AAF's list files -------------------------------------------------------------------------

def test_aaf_lists_with_crlf_blank_malformed_lines_and_missing_files(fake_aaf, cfg_factory):
    root = fake_aaf([(i, 20 + i) for i in range(10)])
    lists = root / "All-Age-Faces Dataset" / "image sets"
    train = lists / "train.txt"
    lines = train.read_text().splitlines()
    train.write_bytes(("\r\n".join(lines + ["", "   ", "99999A20.jpg 0", "justonefield", "\t"]) + "\r\n").encode())
    official = aaf_official_lists(root / "All-Age-Faces Dataset")
    assert official["train"] >= {f"aglined faces/{line.split()[0]}" for line in lines}
    assert not any(name.endswith("\r") or name.endswith(" ") for name in official["train"])
    cfg = cfg_factory("data.source=aaf", "data.subset=0", "data.split=official", root=root)
    fs = prepare(cfg, progress=False)
    from fadenet.data import load_split
    split = load_split(fs, cfg)
    names = set(fs.table["path"])
    assert len(split.train) + len(split.val) + len(split.test) == len(fs) == 10
    assert all(fs.table["path"].iloc[r] in names for r in split.train)


def test_an_aaf_list_that_is_not_text_is_one_clear_error(fake_aaf):
    root = fake_aaf([(i, 20 + i) for i in range(4)])
    bad = root / "All-Age-Faces Dataset" / "image sets" / "val.txt"
    bad.write_bytes(b"\xff\xfe\x00garbage\x80\x81")
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        aaf_official_lists(root / "All-Age-Faces Dataset")
