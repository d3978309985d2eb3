"""The model that ships inside the package: ``fadenet/pretrained/fadenet-<...>-<sha256>.pt``.

The file is an ordinary checkpoint (plain data, read with ``weights_only=True``) whose weights
are stored in float16 to keep it small; they load into a float32 network. Its name ends with the
first 16 hex digits of its own SHA-256, checked on every load, so that a damaged or swapped file
is refused with one clear error. Beside it: ``calibration.json`` (the interval temperature,
fitted on validation), ``config.yaml`` (the resolved training config: ``python -m fadenet train
--config`` re-trains it) and ``MODEL_CARD.md``.

``python -m fadenet ship --checkpoint runs/<run>/best.pt`` makes all four from a trained run.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from .io import atomic_path, atomic_write_text
from .training.checkpoint import CheckpointError, load_checkpoint_file, load_model

FOLDER = Path(__file__).resolve().parent / "pretrained"
HASH_DIGITS = 16
_NAME = re.compile(r"^fadenet-.+-([0-9a-f]{%d})\.pt$" % HASH_DIGITS)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path) -> Path:
    """``path``, once its SHA-256 starts with the digits its name ends with."""
    match = _NAME.match(path.name)
    if not match:
        raise CheckpointError(f"{path} is not named fadenet-<name>-<{HASH_DIGITS} hex digits of its SHA-256>.pt")
    found = sha256(path)
    if not found.startswith(match.group(1)):
        raise CheckpointError(f"{path} is damaged or was replaced: its SHA-256 is {found[:HASH_DIGITS]}..., "
                              f"its name says {match.group(1)}...; reinstall the package or run `git checkout {path.name}`")
    return path


def shipped_checkpoint(folder: Path = FOLDER) -> Path:
    """The pretrained checkpoint that ships in ``folder``, its hash checked."""
    found = sorted(p for p in folder.glob("fadenet-*.pt"))
    if len(found) != 1:
        what = "no pretrained model" if not found else f"{len(found)} models ({', '.join(p.name for p in found)})"
        raise CheckpointError(f"{folder} holds {what}; give --checkpoint runs/<run>/best.pt, or make one "
                              "with `python -m fadenet ship --checkpoint runs/<run>/best.pt`")
    return verified(found[0])


def pretrained(device: str | torch.device = "cpu"):
    """The shipped FADE-Net in eval mode (``fadenet.pretrained()``); its ``meta`` says what it is."""
    return load_model(shipped_checkpoint(), device)[0]


@dataclass
class PhotoModel:
    """The model a chapter works with and the faces it was trained on (their test split unseen)."""
    checkpoint: Path
    model: torch.nn.Module
    cfg: object  # the checkpoint's own config
    faces: object
    split: object
    label: str   # for captions: which model this is


def photo_model(cfg, progress: bool = False) -> PhotoModel:
    """``eval.photo_model`` of ``cfg``: the shipped model, or the profile's chapter 03 run
    (trained now if it is not there yet)."""
    from .training import train
    from .training.checkpoint import trained_faces
    if cfg.eval.photo_model == "shipped":
        checkpoint = shipped_checkpoint()
        label = f"shipped model {checkpoint.name}"
    else:
        run = train(cfg)
        checkpoint, label = run.best, f"checkpoint {run.folder.name}"
    model, model_cfg, state = load_model(checkpoint)
    faces, split = trained_faces(model_cfg, state, progress=progress)
    return PhotoModel(checkpoint, model, model_cfg, faces, split, label)


def write_shipped(checkpoint: str | Path, folder: Path = FOLDER) -> Path:
    """Copy a trained checkpoint's weights in float16 (and its config and metadata) into
    ``folder`` under its hash-bearing name, replacing the model shipped before."""
    state = load_checkpoint_file(checkpoint)
    keep = {k: state[k] for k in ("format", "config", "meta", "data_source", "epoch", "val_mae") if k in state}
    keep["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    meta = state.get("meta", {})
    stem = f"fadenet-{state.get('data_source', 'data')}-{meta.get('backbone', 'net')}-{state['config']['data']['size']}px"
    folder.mkdir(parents=True, exist_ok=True)
    # serialised in memory: torch.save names the archive's records after the file, so saving to a
    # temporary file would make the bytes, and the hash, differ from one ship to the next
    buffer = io.BytesIO()
    torch.save(keep, buffer)
    data = buffer.getvalue()
    target = folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:HASH_DIGITS]}.pt"
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    for old in folder.glob("fadenet-*.pt"):
        if old != target:
            old.unlink()
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(state["config"], sort_keys=False))
    meta = Path(checkpoint).with_name("meta.json")
    if meta.is_file():  # the run's record: compute, time, epochs (the card quotes it)
        atomic_write_text(folder / "run.json", meta.read_text())
    else:
        (folder / "run.json").unlink(missing_ok=True)
    return target


# ---- the model card --------------------------------------------------------------------------
GENDERS = ("female", "male")


def _compute_sentence(checkpoint: Path) -> str:
    """The training compute, from the run's ``meta.json`` (written beside the card as ``run.json``)."""
    run = checkpoint.with_name("run.json")
    if not run.is_file():
        return ""
    m = json.loads(run.read_text())
    return (f"\nTraining compute: {m['epoch_equivalents']:.1f} epoch-equivalents (epochs of the "
            f"{m['train']:,} training faces at 112 px, counted in multiply-adds), "
            f"{m['train_seconds'] / 60:.0f} minutes on {_machine(m)}; "
            f"best validation epoch {m['best_epoch']} of {m['epochs_done']}.")


def _machine(run: dict) -> str:
    if run.get("machine"):
        return run["machine"]
    from .harness import machine_text
    return f"{machine_text()} (the machine `ship` ran on: the run did not record its own)"


def _intervals_text(calibration) -> str:
    """The card's Intervals section: the method calibrate chose on validation and its test coverage."""
    test = calibration.by_group[(calibration.by_group["split"] == "test") & (calibration.by_group["group"] == "all")]
    cover = test.set_index("method")
    chosen = cover.loc[calibration.interval]
    worst = calibration.by_group[(calibration.by_group["split"] == "test")
                                 & (calibration.by_group["method"] == calibration.interval)]
    worst = worst.loc[(worst["90%"] - 0.9).abs().idxmax()]
    how = (f"the distribution tempered by {calibration.temperature:.3f}" if calibration.interval == "temperature"
           else f"the predicted age +- {calibration.scales[0.5]:.2f} and {calibration.scales[0.9]:.2f} predicted "
                "standard deviations (split-conformal)")
    other = "split-conformal" if calibration.interval == "temperature" else "temperature"
    return (f"`predict` reports 50% and 90% intervals from {how}, fitted on validation with TTA {calibration.tta} "
            f"and chosen over the {other} intervals for coverage per life stage on validation. On test they held "
            f"the true age for {chosen['50%']:.1%} and {chosen['90%']:.1%} of faces; the group furthest from 90% "
            f"is {worst['group']} ({worst['90%']:.1%} of {int(worst['faces'])} faces; per group: chapter 08, "
            f"`figures/tables/08_coverage_by_age.csv`).")


def shipped_caption(checkpoint: Path) -> str:
    """Caption of the shipped model's table: data, file, compute, machine, command."""
    from .figures import provenance
    _, cfg, state = load_model(checkpoint)
    run_file = checkpoint.with_name("run.json")
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    compute = (f" | {run['epoch_equivalents']:.1f} epoch-equivalents, {run['train_seconds'] / 60:.0f} min on {_machine(run)}"
               if run else "")
    return (f"{provenance(cfg, state.get('data_source') or cfg.data.source, run.get('images'))} | {checkpoint.name}"
            f"{compute} | python -m fadenet train --config fadenet/pretrained/config.yaml")


def card_tables(checkpoint: Path, progress: bool = False, resamples: int = 2000) -> dict[str, pd.DataFrame]:
    """The measurements of the model card, from the checkpoint's own validation and test faces:
    MAE and CS@5 with and without TTA (95% bootstrap intervals over faces), MAE per age group and
    per gender on test."""
    from .evaluation.evaluate import evaluate
    from .evaluation.metrics import mae_per_group, summary
    rng = np.random.default_rng(0)
    rows, tables = [], {}
    for part in ("val", "test"):
        for tta in ("none", "flip", "multi"):
            result = evaluate([checkpoint], tta=tta, part=part, progress=progress)
            errors = result.table["abs_error"].to_numpy()
            means = errors[rng.integers(0, len(errors), (resamples, len(errors)))].mean(1)
            s = summary(result.table)
            rows.append({"split": part, "TTA": tta, "faces": s["faces"], "MAE": s["MAE"],
                         "95% low": np.quantile(means, 0.025), "95% high": np.quantile(means, 0.975),
                         "CS@5": s["CS@5"]})
            if (part, tta) == ("test", "none"):
                test = result.table
    tables["accuracy"] = pd.DataFrame(rows)
    tables["age groups"] = mae_per_group(test)
    gender = _genders(checkpoint, test["path"])
    tables["gender"] = pd.DataFrame([{"gender": g, "faces": int((gender == g).sum()),
                                      "MAE": test["abs_error"][gender == g].mean(),
                                      "mean error": test["error"][gender == g].mean()}
                                     for g in GENDERS if (gender == g).any()])
    return tables


def _genders(checkpoint: Path, paths: pd.Series) -> pd.Series:
    from .training.checkpoint import trained_faces
    _, cfg, state = load_model(checkpoint)
    faces, _ = trained_faces(cfg, state, progress=False)
    by_path = dict(zip(faces.table["path"], faces.table["gender"].astype(str)))
    return paths.map(by_path).reset_index(drop=True)


def write_card(checkpoint: Path, tables: dict[str, pd.DataFrame], calibration, folder: Path = FOLDER) -> Path:
    """``MODEL_CARD.md`` beside the shipped file, every number from ``tables`` and ``calibration``."""
    from .figures import markdown_table
    from .model import count_parameters
    model, cfg, state = load_model(checkpoint)
    meta = model.meta
    acc = tables["accuracy"].set_index(["split", "TTA"])
    test = acc.loc[("test", "none")]
    size_mb = checkpoint.stat().st_size / 1e6
    text = f"""# Model card: the shipped FADE-Net

`{checkpoint.name}`: {size_mb:.1f} MB of float16 weights; the name ends with the
start of the file's SHA-256, checked on every load. Used by `predict`, `evaluate`, `export`, `calibrate` and `bench
faces` when no `--checkpoint` is given;
in Python `fadenet.pretrained()`, or `torch.hub.load("<checkout>", "fadenet", source="local")`.

**Test MAE {test['MAE']:.2f} years** (95% interval {test['95% low']:.2f} to {test['95% high']:.2f}; {int(test['faces']):,}
All-Age-Faces test faces; one model, no test-time augmentation).

## What it is
FADE-Net (coordinate attention, texture/semantic fusion, SPP, DLDL-v2) on an ImageNet
{meta.get('backbone', '?')} backbone, the one ImageNet backbone this workbook can obtain offline
(the paper's is MobileNetV3-Large), at {cfg.data.size} px.
It outputs a distribution over ages 0-80; the age is its mean.

## Data and preprocessing
All-Age-Faces (13,322 faces of East Asian people aged 2-80; Cheng et al., 2019), split
{cfg.data.split} stratified by age with seed {cfg.data.seed}: trained on the training part,
the epoch kept by validation MAE, the test part read for this card. Faces are aligned by five
MTCNN landmarks onto a fixed eye and mouth geometry (chapter 01), as `predict` aligns a photo's.

## Recipe
`python -m fadenet train --config fadenet/pretrained/config.yaml` re-trains it (the resolved
config beside this card): {cfg.train.epochs} epochs of the training part, batch {cfg.train.batch_size},
AdamW lr {cfg.train.lr:g} with {cfg.train.schedule} decay, augmentation strength {cfg.train.aug_strength:g}
(0: flips only), weight average {cfg.train.ema_decay:g}; {count_parameters(model):,} parameters. Then `python -m fadenet ship
--checkpoint runs/<run>/best.pt` writes this folder.{_compute_sentence(checkpoint)}

## Accuracy
MAE in years with 95% bootstrap intervals over faces; CS@5 = share of faces within 5 years.

{markdown_table(tables['accuracy'])}

Test faces by age group (mean error: predicted minus true, the bias):

{markdown_table(tables['age groups'])}

By gender (All-Age-Faces' labels):

{markdown_table(tables['gender'])}

## Intervals
{_intervals_text(calibration)}

## Intended use and limitations
For research and teaching: estimating apparent age from a frontal face photo, and as a baseline
to compare ideas against. Not for decisions about people (access, eligibility, law enforcement,
age verification): an error of several years is typical and larger at the extremes (the table
above). All-Age-Faces holds East Asian faces only, photographed mostly frontal and well lit:
on faces of other ethnicities, on children under 2 or adults over 80, or in profile, the error
is unmeasured here and likely larger. What compression, blur, low resolution, light, noise and
a covered face do to it, chapter 08 measures on the test faces
(`figures/tables/08_robustness.csv`); how it differs between women and men across ages, chapter
05 (`figures/tables/05_fairness.csv`). Ages are the dataset's labels (real age), not apparent
age.

## Licence
The code is MIT. The weights are learnt from All-Age-Faces, released by its authors for
research use: use the weights for non-commercial research, and cite the dataset (Cheng et al.,
"Exploiting effective facial patches for robust gender recognition", Tsinghua Science and
Technology, 2019) and the FADE-Net authors.
"""
    path = folder / "MODEL_CARD.md"
    atomic_write_text(path, text)
    return path
