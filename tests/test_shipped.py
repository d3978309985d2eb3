"""The model shipped in the package: its file and hash, its predictions against stored values, and
the commands that use it when no --checkpoint is given.

The stored values (tests/data/shipped_reference.json) are refreshed after `fadenet ship` with
`python tests/test_shipped.py --write`; they name the file they were made from.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import fadenet
from fadenet.cli import main
from fadenet.data import synthetic
from fadenet.model import predict_probs, expected_age
from fadenet.shipped import HASH_DIGITS, sha256, shipped_checkpoint
from fadenet.training import CheckpointError, load_model

REFERENCE = Path(__file__).parent / "data" / "shipped_reference.json"
AAF_FILES = ["00012A02.jpg", "03456A30.jpg", "06001A46.jpg", "09876A32.jpg", "12345A54.jpg"]


def synthetic_faces(size: int) -> np.ndarray:
    """Four procedural faces (ages 3, 25, 50, 75), rendered the same on every machine."""
    table = synthetic.synthetic_table(4, seed=11)
    faces = [synthetic.render(path, age, subject, 11) for path, age, subject in
             zip(table["path"], (3, 25, 50, 75), table["subject"])]
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in faces])


def aligned_crops(folder: Path, names: list[str], size: int) -> np.ndarray:
    """Real faces aligned by their landmarks, as the training cache and `predict` align them."""
    from fadenet.data import detect, faces
    crops = []
    for name in names:
        rgb = faces.read_rgb(folder / name)
        crops.append(detect.align(rgb, detect.detect(rgb, "mtcnn")[0], size))
    return np.stack(crops)


def predicted_ages(model, size: int, images: np.ndarray) -> list[float]:
    return [round(float(a), 4) for a in expected_age(predict_probs(model, images, np.arange(len(images))))]


def test_the_shipped_file_is_small_and_its_name_carries_its_hash():
    path = shipped_checkpoint()
    assert sha256(path).startswith(path.stem[-HASH_DIGITS:])
    assert path.stat().st_size < 15e6
    assert (path.parent / "MODEL_CARD.md").is_file() and (path.parent / "calibration.json").is_file()


def test_shipping_is_reproducible_byte_for_byte(tmp_path):
    from fadenet.shipped import write_shipped
    shipped = shipped_checkpoint()
    first, second = write_shipped(shipped, tmp_path / "a"), write_shipped(shipped, tmp_path / "b")
    assert first.name == second.name == shipped.name  # float16 of float16 weights: the same file again
    assert first.read_bytes() == second.read_bytes() == shipped.read_bytes()


def test_pretrained_predicts_the_stored_ages_of_synthetic_faces():
    reference = json.loads(REFERENCE.read_text())
    assert reference["file"] == shipped_checkpoint().name, "stored values are of another file: refresh them"
    model = fadenet.pretrained()
    assert not model.training
    ages = predicted_ages(model, reference["size"], synthetic_faces(reference["size"]))
    assert ages == pytest.approx(reference["synthetic"], abs=2e-3)


def test_pretrained_predicts_the_stored_ages_of_real_faces(aaf_root):
    reference = json.loads(REFERENCE.read_text())
    model, cfg, _ = load_model(shipped_checkpoint())
    crops = aligned_crops(aaf_root / "All-Age-Faces Dataset" / "aglined faces", AAF_FILES, cfg.data.size)
    assert predicted_ages(model, cfg.data.size, crops) == pytest.approx(reference["aaf"], abs=2e-3)


def test_torch_hub_loads_it_from_the_checkout():
    import torch
    root = Path(fadenet.__file__).resolve().parents[1]
    model = torch.hub.load(str(root), "fadenet", source="local")
    reference = json.loads(REFERENCE.read_text())
    assert predicted_ages(model, reference["size"], synthetic_faces(reference["size"])) == \
        pytest.approx(reference["synthetic"], abs=2e-3)


def test_a_file_whose_hash_does_not_match_is_refused(tmp_path):
    original = shipped_checkpoint()
    copy = tmp_path / original.name
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    copy.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged or was replaced"):
        shipped_checkpoint(tmp_path)
    renamed = tmp_path / "other"
    renamed.mkdir()
    shutil.copy(original, renamed / original.name.replace(original.stem[-4:], "0000"))
    with pytest.raises(CheckpointError, match="damaged or was replaced"):
        shipped_checkpoint(renamed)
    with pytest.raises(CheckpointError, match="no pretrained model"):
        shipped_checkpoint(tmp_path / "nothing-here")


def test_predict_without_a_checkpoint_writes_an_age(tmp_path, monkeypatch, capsys):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), cv2.cvtColor(synthetic_faces(160)[1], cv2.COLOR_RGB2BGR))
    monkeypatch.chdir(tmp_path)  # any folder
    assert main(["predict", str(image), "--whole-image", "--detector", "haar", "--out", "ages.csv"]) == 0
    import pandas as pd
    rows = pd.read_csv(tmp_path / "ages.csv")
    assert len(rows) == 1 and 0 <= rows["predicted_age"].iloc[0] <= 80
    assert bool(rows["calibrated"].iloc[0])  # the shipped calibration.json was found beside the file
    assert rows["low_90"].iloc[0] <= rows["low_50"].iloc[0] <= rows["predicted_age"].iloc[0] <= rows["high_50"].iloc[0]


def test_evaluate_without_a_checkpoint_scores_the_stored_test_mae(aaf_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FADENET_DATA_ROOT", str(aaf_root))
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--dataset", "aaf", "--split", "test", "--tta", "none"]) == 0
    out = capsys.readouterr().out
    mae = float(out.split("MAE ")[1].split(",")[0])
    assert mae == pytest.approx(json.loads(REFERENCE.read_text())["test_mae"], abs=1e-3)
    assert list(tmp_path.glob("predictions-*.csv")), "predictions go to the current folder, not the package"


def write_reference() -> None:
    import os
    model, cfg, _ = load_model(shipped_checkpoint())
    size = cfg.data.size
    values = {"file": shipped_checkpoint().name, "size": size,
              "synthetic": predicted_ages(model, size, synthetic_faces(size))}
    root = os.environ.get("FADENET_DATA_ROOT")
    if root:
        from fadenet.evaluation.evaluate import evaluate
        crops = aligned_crops(Path(root) / "All-Age-Faces Dataset" / "aglined faces", AAF_FILES, size)
        values["aaf"] = predicted_ages(model, size, crops)
        values["test_mae"] = round(float(evaluate([shipped_checkpoint()], progress=False).summary()["MAE"]), 4)
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(values, indent=1) + "\n")


if __name__ == "__main__" and "--write" in sys.argv:
    write_reference()
