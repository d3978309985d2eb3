"""A procedural face-like image set whose appearance depends on age, so that the whole workbook
runs where no real dataset is present. Every table and figure made from it says so; its
numbers say nothing about real faces.

Ageing cues drawn: head shape (round in children, longer in adults), eye size and height,
hair that greys after 40, forehead lines and crow's feet that multiply with age. Each subject
(a fixed skin tone, hair colour and face width) appears at several ages.
"""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from .sources import NUM_AGES

IMAGES_PER_SUBJECT = 4
RENDER_SIZE = 128


def synthetic_table(count: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ages = rng.integers(0, NUM_AGES, size=count)
    subjects = np.arange(count) // IMAGES_PER_SUBJECT
    genders = np.where(rng.random(count // IMAGES_PER_SUBJECT + 1)[subjects] < 0.5, "female", "male")
    return pd.DataFrame({
        "path": [f"synthetic/{i:05d}.png" for i in range(count)],
        "age": ages.astype(int),
        "gender": genders,
        "subject": [f"s{s:05d}" for s in subjects],
    })


def render(row_path: str, age: int, subject: str, seed: int) -> np.ndarray:
    """The RGB uint8 image of one synthetic row, the same for the same arguments."""
    index = int(row_path.rsplit("/", 1)[1].split(".")[0])
    person = np.random.default_rng([seed, int(subject[1:])])
    shot = np.random.default_rng([seed, index, 1])
    s = RENDER_SIZE
    young = max(0.0, 1.0 - age / 18.0)        # 1 for babies, 0 from 18 on
    old = float(np.clip((age - 40) / 40.0, 0.0, 1.0))

    img = np.empty((s, s, 3), np.uint8)
    img[:] = shot.integers(60, 200, size=3)
    skin = person.uniform([150, 110, 90], [235, 190, 160])
    hair = person.uniform([10, 10, 10], [90, 70, 50]) * (1 - old) + np.array([200, 200, 200]) * old
    width = person.uniform(0.27, 0.32) * s
    height = width * (1.0 + 0.3 * (1 - young))
    cx = s / 2 + shot.uniform(-3, 3)
    cy = s * 0.55 + shot.uniform(-3, 3)

    cv2.ellipse(img, (int(cx), int(cy - height * 0.35)), (int(width * 1.1), int(height * 0.85)),
                0, 180, 360, _color(hair), -1)
    cv2.ellipse(img, (int(cx), int(cy)), (int(width), int(height)), 0, 0, 360, _color(skin), -1)

    eye_y = cy - height * (0.05 + 0.2 * (1 - young))
    eye_r = max(2, int(s * (0.035 + 0.025 * young)))
    for side in (-1, 1):
        ex = int(cx + side * width * 0.42)
        cv2.circle(img, (ex, int(eye_y)), eye_r, (245, 245, 245), -1)
        cv2.circle(img, (ex, int(eye_y)), max(1, eye_r // 2), (40, 30, 20), -1)
        for k in range(int(age // 20)):  # crow's feet
            y = int(eye_y + (k - 1) * 3)
            cv2.line(img, (int(ex + side * (eye_r + 2)), y), (int(ex + side * (eye_r + 7)), y + side),
                     _color(skin * 0.6), 1)
    for k in range(int(age // 12)):      # forehead lines
        y = int(eye_y - height * 0.25 - k * 4)
        cv2.line(img, (int(cx - width * 0.5), y), (int(cx + width * 0.5), y), _color(skin * 0.7), 1)
    mouth_y = int(cy + height * 0.5)
    cv2.ellipse(img, (int(cx), mouth_y), (int(width * 0.35), 4), 0, 0, 180, (60, 40, 150), 2)

    noise = shot.normal(0, 4 + 6 * old, size=img.shape)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _color(rgb) -> tuple[int, int, int]:
    # cv2 takes colours as int tuples; channel order is whatever the image uses (RGB here).
    return tuple(int(v) for v in rgb)
