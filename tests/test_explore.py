"""Predicting users' pictures, folders and videos, the predict command, and the explorer's
widget callbacks driven from Python."""
from __future__ import annotations

import copy
import dataclasses
import datetime
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fadenet import cli
from fadenet.config import load_config
from fadenet.data import faces as face_io
from fadenet.data import load_split, prepare
from fadenet.data import detect
from fadenet.explore import AgePredictor, Explorer, FacePrediction, interval, moments, predict_paths, read_image
from fadenet.training import train

SIZE = 64  # the smoke profile's input size
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A tiny model trained for real (synthetic faces, one epoch) and the config it was trained with."""
    base = tmp_path_factory.mktemp("explore")
    (base / "empty").mkdir()
    cfg = load_config("smoke", f"data.root={base / 'empty'}", f"data.cache_dir={base / 'cache'}",
                      f"runs_dir={base / 'runs'}", "data.subset=64", "data.synthetic_count=64",
                      "train.batch_size=16")
    return train(cfg, progress=False).best, cfg


@pytest.fixture(scope="module")
def predictor(smoke_run) -> AgePredictor:
    return AgePredictor.from_checkpoint(smoke_run[0], tta="flip")


@pytest.fixture(scope="module")
def aaf_images(aaf_root) -> list[Path]:
    """Three real All-Age-Faces pictures of different ages."""
    folder = aaf_root / "All-Age-Faces Dataset" / "aglined faces"
    return sorted(folder.iterdir())[1000::4000][:3]


def no_face_picture(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (200, 200), (200, 120, 40)).save(path)
    return path


def face_video(path: Path, face: Path, frames: int = 30, fps: float = 10.0) -> Path:
    """A short video of a real face sliding across a grey background."""
    rgb = face_io.read_rgb(face)
    bgr = cv2.cvtColor(cv2.resize(rgb, (240, 300)), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 400))
    for i in range(frames):
        canvas = np.full((400, 640, 3), 90, np.uint8)
        canvas[50:350, 20 + 10 * i:260 + 10 * i] = bgr
        writer.write(canvas)
    writer.release()
    return path


def rows_of(table: pd.DataFrame, name: str) -> pd.DataFrame:
    return table[table["input"].map(lambda p: Path(p).name) == name]


# ---- distributions and reading ------------------------------------------------------------

def test_moments_and_central_interval():
    probs = np.zeros(81)
    probs[[20, 30]] = 0.5
    assert moments(probs) == pytest.approx((25.0, 5.0))
    assert interval(probs, 0.9) == (20, 30)
    ages = np.arange(81)
    gauss = np.exp(-0.5 * ((ages - 40) / 4.0) ** 2)
    low, high = interval(gauss / gauss.sum(), 0.9)
    assert (low, high) == (33, 47)  # mean +- 1.645 sigma, rounded into whole ages


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (9000, 9000), 1).save(path)  # 81 MP, a few kB on disk
    with pytest.raises(face_io.ImageReadError, match="larger than 64,000,000 pixels"):
        read_image(path)


# ---- pictures with faces (real AAF images) ------------------------------------------------

def test_a_photo_is_aligned_as_in_training_and_predicted(predictor, aaf_images):
    rgb = face_io.read_rgb(aaf_images[0])
    [face] = predictor.predict_image(rgb)
    [found] = detect.detect(rgb, "mtcnn")
    assert face.detected and np.array_equal(face.crop, detect.align(rgb, found, SIZE))
    assert face.probs.shape == (81,) and face.probs.sum() == pytest.approx(1, abs=1e-5)
    low, high = face.interval(0.9)
    assert 0 <= low <= face.interval(0.5)[0] <= face.age <= face.interval(0.5)[1] <= high <= 80 and face.std > 0
    # flip TTA averages the face's and its mirror's distributions
    plain = predictor.with_tta("none")
    mirrored = plain.predict_crops(face.crop[None, :, ::-1].copy())[0]
    np.testing.assert_allclose(face.probs, (plain.predict_crops(face.crop[None])[0] + mirrored) / 2, atol=1e-6)


def test_the_calibration_narrows_the_interval_and_keeps_the_age():
    ages = np.arange(81)
    probs = np.exp(-0.5 * ((ages - 30.0) / 6.0) ** 2)
    probs /= probs.sum()
    face = detect.Face((0, 0, 10, 10), 1.0, None)
    raw = FacePrediction(face, True, np.zeros((SIZE, SIZE, 3), np.uint8), probs)
    sharp = dataclasses.replace(raw, temperature=0.25)  # a Gaussian's spread times sqrt(0.25)
    assert sharp.age == pytest.approx(raw.age) == pytest.approx(30.0)
    assert raw.std == pytest.approx(6.0, rel=1e-3) and sharp.std == pytest.approx(3.0, rel=1e-3)
    assert raw.interval(0.9) == (20, 40) and sharp.interval(0.9) == (25, 35)  # 30 +- 1.645 sigma


def test_every_face_of_a_group_picture_gets_a_row_and_is_drawn(predictor, aaf_images, tmp_path):
    tiles = [cv2.resize(face_io.read_rgb(p), (150, 190)) for p in aaf_images * 2]  # six faces
    group = np.full((420, 520, 3), 230, np.uint8)
    for i, tile in enumerate(tiles):
        top, left = 10 + 210 * (i // 3), 10 + 170 * (i % 3)
        group[top:top + 190, left:left + 150] = tile
    path = tmp_path / "group.png"
    Image.fromarray(group).save(path)
    result = predict_paths([path], predictor, tmp_path / "g.csv", annotate_images=True, progress=False)
    table = result.table
    assert len(table) == 6 and (table["error"] == "").all() and list(table["face"]) == list(range(6))
    centres = sorted(zip((table["box_y"] + table["box_h"] / 2) // 210, (table["box_x"] + table["box_w"] / 2) // 170))
    assert centres == [(r, c) for r in range(2) for c in range(3)]  # one row per tile, none twice
    inside = (table["eye_left_x"] > table["box_x"]) & (table["eye_right_x"] < table["box_x"] + table["box_w"])
    assert inside.all() and (table["low_50"] <= table["high_50"]).all() and (table["low_90"] <= table["low_50"]).all()
    [annotated] = result.outputs
    drawn = cv2.imread(str(annotated))
    assert drawn.shape == group.shape and ((drawn[..., 1] > 150) & (drawn[..., 0] < 80) & (drawn[..., 2] < 80)).sum() > 1000


def test_every_input_of_a_folder_gets_a_row(predictor, aaf_images, tmp_path):
    folder = tmp_path / "inputs"
    nested = folder / "nested" / "deeper"
    nested.mkdir(parents=True)
    for path in aaf_images[:2]:
        shutil.copy(path, nested / path.name)
    real = Image.open(aaf_images[0])
    real.convert("L").save(folder / "gray.jpg")
    real.convert("CMYK").save(folder / "cmyk.jpg")
    rgba = real.convert("RGBA")
    rgba.putalpha(160)
    rgba.save(folder / "alpha.png")
    no_face_picture(folder / "wall.jpg")
    (folder / "notes.txt").write_text("not a picture")
    data = aaf_images[1].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[:len(data) // 2])
    Image.new("1", (12000, 12000), 1).save(folder / "huge.png")  # 144 MP, a few kB on disk
    (folder / "broken.mp4").write_text("not a video either")
    Image.new("RGB", (1, 1), (128, 128, 128)).save(folder / "one_pixel.png")
    first = real.convert("RGB")
    first.save(folder / "animated.gif", save_all=True, append_images=[Image.new("RGB", first.size, (0, 0, 0))])
    gray16 = (np.asarray(real.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(gray16).save(folder / "sixteen.png")
    assert Image.open(folder / "sixteen.png").mode.startswith("I")
    palette = real.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png", transparency=0)
    turned = real.transpose(Image.Transpose.ROTATE_90)  # stored on its side, EXIF says "turn back"
    exif = Image.Exif()
    exif[0x0112] = 6
    turned.save(folder / "rotated.jpg", exif=exif.tobytes())
    os.symlink(folder, folder / "nested" / "loop")  # a folder link back up: not followed
    out = tmp_path / "out" / "results.csv"

    result = predict_paths([folder, tmp_path / "missing.jpg", "7"], predictor, out, progress=False)

    table = pd.read_csv(out).fillna({"error": "", "framing": ""})
    assert len(table) == len(result.table) == 17
    predicted = table[table["error"] == ""]
    assert sorted(predicted["input"].map(lambda p: Path(p).name)) == sorted(
        ["alpha.png", "cmyk.jpg", "gray.jpg", "animated.gif", "sixteen.png", "palette.png", "rotated.jpg",
         aaf_images[0].name, aaf_images[1].name])
    assert predicted["framing"].eq("detected face").all() and predicted["face"].eq(0).all()
    assert predicted["predicted_age"].between(0, 80).all() and (predicted["box_w"] > 0).all()
    errors = dict(zip(table["input"].map(lambda p: Path(p).name), table["error"]))
    assert errors["wall.jpg"] == errors["one_pixel.png"] == "no face found"
    assert errors["notes.txt"].startswith("not a readable image: cannot identify image file")
    assert errors["truncated.jpg"].startswith("not a readable image: image file is truncated")
    assert errors["huge.png"] == "not a readable image: image larger than 64,000,000 pixels"
    assert not any("loop" in name for name in errors)
    assert errors["broken.mp4"] == "not a readable video"
    assert errors["missing.jpg"] == "no such file or folder"
    assert errors["7"] == "camera 7 could not be opened"
    # every other version of the first face (grey, CMYK, transparent, first frame of an animation,
    # 16-bit, palette, turned back by its EXIF orientation) is found where the face is: its eyes
    eyes = predicted.set_index(predicted["input"].map(lambda p: Path(p).name))[
        ["eye_left_x", "eye_left_y", "eye_right_x", "eye_right_y"]]
    for name in ("gray.jpg", "cmyk.jpg", "alpha.png", "animated.gif", "sixteen.png", "palette.png", "rotated.jpg"):
        assert np.abs(eyes.loc[name].to_numpy() - eyes.loc[aaf_images[0].name].to_numpy()).max() <= 4, name


def test_an_unreadable_file_is_a_row_and_the_folder_goes_on(predictor, aaf_images, tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    for path in aaf_images[:2]:
        shutil.copy(path, folder / path.name)
    real_open = face_io.Image.open

    def refuse_first(path, *args, **kwargs):  # as chmod 000 would (tests may run as root)
        if Path(path).name == aaf_images[0].name:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(face_io.Image, "open", refuse_first)
    table = predict_paths([folder], predictor, tmp_path / "r.csv", progress=False).table
    errors = dict(zip(table["input"].map(lambda p: Path(p).name), table["error"]))
    assert errors[aaf_images[0].name].startswith("not a readable image: [Errno 13] Permission denied")
    assert errors[aaf_images[1].name] == ""


def test_a_video_is_sampled_and_annotated(predictor, aaf_images, tmp_path):
    video = face_video(tmp_path / "clip.mp4", aaf_images[0])
    blank = tmp_path / "blank.avi"
    writer = cv2.VideoWriter(str(blank), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for _ in range(10):
        writer.write(np.full((120, 160, 3), 30, np.uint8))
    writer.release()
    out = tmp_path / "video.csv"

    result = predict_paths([video, blank], predictor, out, every=0.5, progress=False)

    clip, empty = rows_of(result.table, "clip.mp4"), rows_of(result.table, "blank.avi")
    assert list(clip["frame"]) == [0, 5, 10, 15, 20, 25] and list(clip["time_s"]) == pytest.approx(
        [0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert (clip["error"] == "").all() and clip["box_x"].is_monotonic_increasing  # the face moves right
    assert list(empty["frame"]) == [0, 5] and (empty["error"] == "no face found").all()
    annotated = tmp_path / "video_clip.mp4"
    assert result.outputs == [annotated, tmp_path / "video_blank.mp4"]
    capture = cv2.VideoCapture(str(annotated))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 6
    ok, frame = capture.read()
    capture.release()
    # the face box is drawn in green
    assert ok and ((frame[..., 1] > 150) & (frame[..., 0] < 80) & (frame[..., 2] < 80)).sum() > 200

    capped = predict_paths([video], predictor, tmp_path / "capped.csv", every=0.1, max_frames=3, progress=False)
    assert list(capped.table["frame"]) == [0, 1, 2]


# ---- pictures without faces, interruptions, the command -------------------------------------

def test_whole_image_fallback_predicts_the_centred_square(predictor, tmp_path):
    picture = tmp_path / "wide.png"
    Image.new("RGB", (300, 100), (90, 90, 90)).save(picture)
    result = predict_paths([picture], predictor, tmp_path / "r.csv", whole_image=True, progress=False)
    row = result.table.iloc[0]
    assert row["framing"] == "whole image" and row["error"] == ""
    assert (row["box_x"], row["box_y"], row["box_w"], row["box_h"]) == (100, 0, 100, 100)


def test_an_interrupted_run_writes_the_rows_so_far(predictor, tmp_path, monkeypatch):
    pictures = [no_face_picture(tmp_path / f"p{i}.jpg") for i in range(3)]
    real = AgePredictor.predict_image
    calls = []

    def interrupt_on_second(self, rgb, whole_image=False):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, rgb, whole_image)

    monkeypatch.setattr(AgePredictor, "predict_image", interrupt_on_second)
    result = predict_paths(pictures, predictor, tmp_path / "r.csv", whole_image=True, progress=False)
    assert result.interrupted and "interrupted" in result.describe()
    assert list(pd.read_csv(tmp_path / "r.csv")["input"]) == [str(pictures[0])]


def test_predict_command(smoke_run, tmp_path, capsys):
    pictures = tmp_path / "pictures"
    no_face_picture(pictures / "a.jpg")
    (pictures / "b.txt").write_text("text")
    out = tmp_path / "cli.csv"
    code = cli.main(["predict", str(pictures), "--checkpoint", str(smoke_run[0]), "--tta", "multi",
                     "--out", str(out), "--whole-image"])
    assert code == 0
    assert "2 inputs; faces predicted: 1; rows with an error: 1" in capsys.readouterr().out
    assert list(pd.read_csv(out)["framing"].fillna("")) == ["whole image", ""]


def test_predict_command_with_a_bad_checkpoint_is_one_line(tmp_path, capsys):
    code = cli.main(["predict", str(tmp_path), "--checkpoint", str(tmp_path / "nope.pt")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: checkpoint {tmp_path / 'nope.pt'} does not exist"]


# ---- the explorer, driven from Python -------------------------------------------------------

@pytest.fixture(scope="module")
def explorer(smoke_run, predictor, tmp_path_factory) -> Explorer:
    cfg = smoke_run[1]
    faces = prepare(cfg, progress=False)
    # one epoch leaves the distributions nearly flat; a scaled output layer makes them differ
    # visibly between faces and TTA views, so that a changed control shows in the plot
    sharp = copy.deepcopy(predictor.model)
    with torch.no_grad():
        sharp.head[-1].weight.mul_(300)
    return Explorer(dataclasses.replace(predictor, model=sharp), faces, load_split(faces, cfg).test,
                    out_dir=tmp_path_factory.mktemp("predictions"), caption="test caption")


def upload(explorer: Explorer, name: str, content: bytes) -> None:
    explorer.upload.value = ({"name": name, "type": "image/jpeg", "size": len(content), "content": memoryview(content),
                              "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


def is_png(image) -> bool:
    return bytes(image.value).startswith(b"\x89PNG")


def test_explorer_shows_a_face_and_follows_the_index(explorer):
    view = explorer.dataset_view
    assert "face 1 of" in view.text.value and "true age" in view.text.value and "90% interval" in view.text.value
    before = (view.face.value, view.text.value)
    explorer.index.value = 3
    assert "face 3 of" in view.text.value
    assert view.face.value != before[0] and view.text.value != before[1]
    assert is_png(view.face) and is_png(view.cam) and is_png(view.plot)


def test_explorer_age_filter(explorer):
    ages = explorer.faces.ages[explorer.rows]
    low = int(np.median(ages))
    explorer.age_range.value = (low, int(ages.max()))
    inside = int((ages >= low).sum())
    assert explorer.index.max == inside and explorer.index.value == 1
    assert f"face 1 of {inside}" in explorer.dataset_view.text.value
    shown_age = int(explorer.dataset_view.text.value.split("true age <b>")[1].split("<")[0])
    assert shown_age >= low
    missing = next(a for a in range(int(ages.min()), int(ages.max())) if a not in set(ages.tolist()))
    explorer.age_range.value = (missing, missing)
    assert "No faces aged" in explorer.dataset_view.text.value and explorer.dataset_view.face.value == b""
    assert explorer.dataset_view.pictures.layout.display == "none"
    explorer.age_range.value = (int(ages.min()), int(ages.max()))
    assert f"of {len(ages)}" in explorer.dataset_view.text.value


def test_explorer_tta_and_cam_controls_change_the_display(explorer):
    view = explorer.dataset_view
    explorer.layer.value = "spp"
    plot, cam = view.plot.value, view.cam.value
    explorer.tta.value = "multi" if explorer.tta.value != "multi" else "none"
    assert f"TTA {explorer.tta.value}" in view.text.value and view.plot.value != plot
    explorer.method.value = "eigencam"
    assert "Eigen-CAM" in view.text.value and view.cam.value != cam


def test_explorer_upload_without_a_face_offers_the_whole_image(explorer, tmp_path):
    explorer.whole_image.value = False
    upload(explorer, "wall.jpg", no_face_picture(tmp_path / "wall.jpg").read_bytes())
    assert "No face found in wall.jpg" in explorer.upload_view.text.value
    assert explorer.upload_view.face.value == b""
    explorer.whole_image.value = True
    assert "whole image was used" in explorer.upload_view.text.value
    assert is_png(explorer.upload_view.face) and "predicted" in explorer.upload_view.text.value
    upload(explorer, "notes.txt", b"hello")
    assert "notes.txt</b> cannot be read as an image" in explorer.upload_view.text.value


def test_explorer_upload_of_a_real_face(explorer, aaf_images):
    explorer.whole_image.value = False
    upload(explorer, aaf_images[0].name, aaf_images[0].read_bytes())
    text = explorer.upload_view.text.value
    assert "1 face found" in text and "predicted <b>" in text and "90% interval" in text


def test_explorer_folder_box_writes_and_offers_the_csv(explorer, tmp_path):
    folder = tmp_path / "mine"
    no_face_picture(folder / "x.jpg")
    (folder / "y.txt").write_text("text")
    explorer.folder.value = str(folder)
    explorer.folder_button.click()
    result = explorer.folder_result.value
    assert "2 inputs" in result and "download='mine-predictions.csv'" in result and "no face found" in result
    assert len(pd.read_csv(explorer.out_dir / "mine-predictions.csv")) == 2
    explorer.folder.value = str(tmp_path / "absent")
    explorer.folder_button.click()
    assert "is not a folder" in explorer.folder_result.value


def test_explorer_displays_as_a_widget(explorer):
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_the_onnx_engine_predicts_what_pytorch_predicts(smoke_run, aaf_images, tmp_path):
    from fadenet.deploy.export import export_onnx
    from fadenet.training import CheckpointError
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    shutil.copy(smoke_run[0], checkpoint)
    with pytest.raises(CheckpointError, match="python -m fadenet export --checkpoint"):
        AgePredictor.from_checkpoint(checkpoint, engine="onnx")
    torch_predictor = AgePredictor.from_checkpoint(checkpoint, tta="flip")
    with torch.no_grad():  # a sharper output layer, so that the two flip views differ visibly
        torch_predictor.model.head[-1].weight.mul_(300)
    export_onnx(torch_predictor.model, checkpoint.with_name("model.onnx"), SIZE)
    onnx_predictor = AgePredictor.from_checkpoint(checkpoint, tta="flip", engine="onnx")
    rgb = face_io.read_rgb(aaf_images[2])
    [by_torch], [by_onnx] = torch_predictor.predict_image(rgb), onnx_predictor.predict_image(rgb)
    np.testing.assert_allclose(by_onnx.probs, by_torch.probs, atol=1e-5)
    assert by_onnx.probs.sum() == pytest.approx(1, abs=1e-5) and by_onnx.probs.max() > 0.05


@pytest.mark.parametrize("peak", [3, 40, 78])
def test_distribution_legend_stays_off_the_bars(peak):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from fadenet.explore.report import distribution_axes
    ages = np.arange(81)
    probs = np.exp(-0.5 * ((ages - peak) / 3.0) ** 2)
    fig = Figure(figsize=(4.2, 2.4), dpi=90)
    ax = fig.add_subplot()
    distribution_axes(ax, probs / probs.sum(), true_age=peak)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    bars = ax.containers[0]  # the distribution (the shaded interval is a patch too, not a bar)
    tall = [bar.get_window_extent() for bar in bars if bar.get_height() > 0.1 * (probs / probs.sum()).max()]
    assert tall and not any(legend.overlaps(bar) for bar in tall)
