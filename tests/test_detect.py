"""Finding faces and aligning them into the training crops' geometry."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from fadenet.data import detect
from fadenet.data import faces as face_io
from fadenet.data.detect import FACE_TEMPLATE, Face

pytestmark = pytest.mark.usefixtures("one_thread")


def test_similarity_recovers_a_known_rotation_scale_and_shift():
    angle, scale, shift = np.deg2rad(25), 1.7, np.array([12.0, -4.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = FACE_TEMPLATE * 100
    target = source @ (scale * rotation).T + shift
    matrix = detect.similarity(source, target)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_similarity_is_the_least_squares_fit_of_noisy_points():
    rng = np.random.default_rng(0)
    source = FACE_TEMPLATE * 100
    target = 0.5 * source + 3 + rng.normal(0, 1, source.shape)
    matrix = detect.similarity(source, target)
    fitted = source @ matrix[:, :2].T + matrix[:, 2]
    # any other similarity (here: the fit nudged in scale or shift) leaves a larger residual
    best = ((fitted - target) ** 2).sum()
    for nudge in (np.diag([1.01, 1.01]), np.diag([0.99, 0.99])):
        assert ((source @ (matrix[:, :2] @ nudge).T + matrix[:, 2] - target) ** 2).sum() > best
    assert ((fitted + [0.2, 0] - target) ** 2).sum() > best


def test_a_face_whose_landmarks_sit_on_the_template_is_cut_unchanged():
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    face = Face((0, 0, 64, 64), 1.0, FACE_TEMPLATE * 64 + [40, 30])
    np.testing.assert_array_equal(detect.align(picture, face, 64), picture[30:94, 40:104])


def test_a_rotated_and_scaled_face_is_straightened():
    rng = np.random.default_rng(2)
    crop = cv2.resize(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), (96, 96), interpolation=cv2.INTER_LINEAR)
    # put the crop into a bigger picture, twice as large and turned by 20 degrees
    turn = cv2.getRotationMatrix2D((48, 48), 20, 2.0)
    turn[:, 2] += [152, 152]
    picture = cv2.warpAffine(crop, turn, (400, 400), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    landmarks = (FACE_TEMPLATE * 96) @ turn[:, :2].T + turn[:, 2]
    aligned = detect.align(picture, Face((0, 0, 1, 1), 1.0, landmarks), 96)
    inner = (slice(8, -8), slice(8, -8))  # borders differ by interpolation at the picture's edge
    assert np.abs(aligned[inner].astype(int) - crop[inner].astype(int)).mean() < 4
    unturned = detect.align(picture, Face((0, 0, 1, 1), 1.0, (FACE_TEMPLATE * 96) * 2 + 152), 96)
    assert np.abs(unturned[inner].astype(int) - crop[inner].astype(int)).mean() > 20


def test_a_face_without_landmarks_is_cut_as_training_frames_a_box():
    picture = np.arange(300 * 300 * 3, dtype=np.uint32).reshape(300, 300, 3).astype(np.uint8)
    face = Face((100, 80, 60, 50), 1.0, None)
    expected = face_io.crop_square(picture, (130, 105, 60 * face_io.FACE_MARGIN), 32)
    np.testing.assert_array_equal(detect.align(picture, face, 32), expected)


def test_auto_falls_back_to_haar_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(detect, "available", lambda name: name != "mtcnn")
    with caplog.at_level(logging.WARNING, logger="fadenet.detect"):
        assert detect.resolve("auto") == "haar"
    assert len(caplog.records) == 1 and "facenet-pytorch" in caplog.text
    with pytest.raises(ValueError, match="not one of auto, mtcnn, haar"):
        detect.resolve("yolo")


@pytest.fixture(scope="module")
def aaf_pictures(aaf_root):
    folder = aaf_root / "All-Age-Faces Dataset" / "aglined faces"
    return [face_io.read_rgb(p) for p in sorted(folder.iterdir())[::400]]


@pytest.mark.aaf
def test_the_template_is_where_mtcnn_finds_the_training_crops_landmarks(aaf_pictures):
    crops = [face_io.crop_square(rgb, face_io.aligned_face_box(rgb.shape[1], rgb.shape[0]), 224) for rgb in aaf_pictures]
    template, found = detect.landmark_template(crops)
    assert found >= len(crops) - 1
    np.testing.assert_allclose(template, FACE_TEMPLATE, atol=0.02)  # 34 of the 334 faces it was measured on


@pytest.mark.aaf
def test_mtcnn_finds_a_turned_face_in_a_larger_picture_and_undoes_the_turn(aaf_pictures):
    rgb = aaf_pictures[3]
    [reference] = detect.detect(rgb, "mtcnn")
    straight = detect.align(rgb, reference, 112).astype(int)
    canvas = np.full((480, 640, 3), 120, np.uint8)
    turn = cv2.getRotationMatrix2D((rgb.shape[1] / 2, rgb.shape[0] / 2), 25, 0.8)
    turn[:, 2] += [200, 60]
    mask = cv2.warpAffine(np.full(rgb.shape[:2], 255, np.uint8), turn, (640, 480)) > 127
    canvas[mask] = cv2.warpAffine(rgb, turn, (640, 480))[mask]
    found = detect.detect(canvas, "mtcnn")
    assert len(found) == 1 and found[0].score > 0.9
    aligned = detect.align(canvas, found[0], 112).astype(int)
    assert np.abs(aligned - straight).mean() < 12
    # the box alone (Haar's way) leaves the face turned: much further from the straight crop
    boxed = face_io.crop_square(canvas, detect.framed_box(found[0]), 112).astype(int)
    assert np.abs(boxed - straight).mean() > 2 * np.abs(aligned - straight).mean()
