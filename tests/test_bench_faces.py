"""The photo-path benchmark: pictures made from test faces, and how found faces are matched."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from fadenet.data import faces as face_io
from fadenet.data.detect import Face
from fadenet.explore import FacePrediction
from fadenet.explore.bench import Scene, paste, photo_path, spread


def test_paste_puts_the_face_centre_where_asked_at_the_asked_size_and_turn():
    photo = np.zeros((390, 309, 3), np.uint8)
    cx, cy, side = face_io.aligned_face_box(309, 390)
    cv2.circle(photo, (round(cx), round(cy)), 3, (255, 255, 255), -1)            # the face's centre
    cv2.circle(photo, (round(cx + side / 4), round(cy)), 3, (255, 0, 0), -1)     # a point right of it
    canvas = np.full((480, 640, 3), 80, np.uint8)
    paste(canvas, photo, (400.0, 200.0), face_side=side / 2, angle=90)  # half size, a quarter turn left
    white = np.argwhere((canvas[..., 1] > 200) & (canvas[..., 0] > 200))
    red = np.argwhere((canvas[..., 0] > 200) & (canvas[..., 1] < 60))
    np.testing.assert_allclose(white.mean(0), (200, 400), atol=1.5)  # (row, column)
    # side/4 to the right, halved and turned 90 degrees counter-clockwise: side/8 upwards
    np.testing.assert_allclose(red.mean(0), (200 - side / 8, 400), atol=1.5)


@dataclass
class StubPredictor:
    """Returns fixed detections, whatever the picture."""
    found: list
    detector: str = "stub"

    def predict_image(self, rgb, whole_image=False):
        return self.found


def prediction(box, age):
    probs = np.zeros(81)
    probs[age] = 1.0
    return FacePrediction(Face(box, 1.0, None), True, np.zeros((4, 4, 3), np.uint8), probs)


def test_a_pasted_face_counts_as_found_by_the_smallest_detection_holding_its_centre():
    _, jpeg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))
    scenes = [Scene(jpeg.tobytes(), [7, 9], [(20.0, 20.0), (60.0, 40.0)])]
    stub = StubPredictor([prediction((0, 0, 50, 50), 30), prediction((10, 10, 20, 20), 40)])
    table, rate = photo_path(scenes, stub, progress=False)
    assert table["row"].tolist() == [7, 9] and table["found"].tolist() == [True, False]
    assert table["predicted"].iloc[0] == pytest.approx(40.0) and np.isnan(table["predicted"].iloc[1])
    assert rate == 0  # two faces: not a one-face picture, not timed


def test_spread_takes_evenly_spaced_rows():
    assert spread(np.arange(10, 20), 4).tolist() == [10, 13, 16, 19]
    assert spread(np.arange(3), 10).tolist() == [0, 1, 2]
