"""Checkpoints are data, not code: plain config and metadata plus tensors, loaded with
``torch.load(weights_only=True)`` so that a file handed over by someone else cannot run code."""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from ..config import Config, ConfigError, config_from_dict
from ..data import FaceSet, Split, load_split, prepare
from ..model import AgeNet, build_model

CHECKPOINT_FORMAT = "fadenet-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names the file and what is wrong."""


def load_checkpoint_file(path: str | Path, expect: Config | None = None) -> dict:
    """The checkpoint's contents; with ``expect``, also checks it holds that same network."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        _check_archive(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in the unpickler in many ways (IndexError, KeyError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable FADE-Net checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a FADE-Net checkpoint (format {CHECKPOINT_FORMAT} expected)")
    config, weights = state.get("config"), state.get("model")
    if not (isinstance(config, dict) and isinstance(config.get("model"), dict) and isinstance(weights, dict)
            and all(isinstance(v, torch.Tensor) for v in weights.values())):
        raise CheckpointError(f"{path} is a damaged FADE-Net checkpoint (its config or weights are missing)")
    if expect is not None:
        _check_same_network(path, state["config"]["model"], expect.model.__dict__)
    return state


def _check_archive(path: Path) -> None:
    """torch.save writes a zip archive with a CRC-32 of every record, which torch.load does not
    check: a flipped bit in the weights would load as a silently different network."""
    with zipfile.ZipFile(path) as archive:
        damaged = archive.testzip()
    if damaged is not None:
        raise ValueError(f"record {damaged} fails its CRC check")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[AgeNet, Config, dict]:
    """(network with the checkpoint's weights in eval mode, its config, the checkpoint's metadata)."""
    state = load_checkpoint_file(path)
    try:
        cfg = config_from_dict(state["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} carries an unusable config: {e}") from None
    model = build_model(cfg.model)  # random weights: they come from the checkpoint, not from ImageNet
    load_weights(model, path, state)
    model.meta.update(state.get("meta", {}))
    return model.to(device).eval(), cfg, state


def data_config(trained: Config, source: str, data_root: str | Path | None = None, cross: bool = False,
                location: str = "") -> Config:
    """A checkpoint's data settings pointed at ``source`` (and ``data_root``, or ``location``: the
    CSV or folder of a csv or folder source): same size and framing; with ``cross`` (another
    dataset than it learnt from), the whole dataset, no subset."""
    overrides = {"data.source": source}
    if location:
        overrides[f"data.{source}"] = str(location)
    if data_root:
        overrides["data.root"] = str(data_root)
    if cross:
        overrides["data.subset"] = 0
    return trained.replaced(overrides)


def trained_faces(cfg: Config, state: dict, progress: bool = True) -> tuple[FaceSet, Split]:
    """The faces a checkpoint (its config and contents, from :func:`load_model`) was trained on,
    framed and sized as in training, and their split."""
    data_cfg = data_config(cfg, state.get("data_source") or cfg.data.source)
    faces = prepare(data_cfg, progress=progress)
    return faces, load_split(faces, data_cfg)


def load_weights(model: AgeNet, path: str | Path, state: dict | None = None) -> None:
    """Load a checkpoint's weights into ``model``, or say plainly why they do not fit."""
    state = state or load_checkpoint_file(path)
    saved = state["config"]["model"]
    here = {"arch": model.meta["arch"], "backbone": model.meta["backbone"],
            "num_classes": model.head[-1].out_features}
    _check_same_network(Path(path), saved, here)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this {_describe(here)}: "
                              f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None


def _check_same_network(path: Path, saved: dict, here: dict) -> None:
    keys = ("arch", "backbone", "num_classes")
    if any(saved.get(k) != here.get(k) for k in keys):
        raise CheckpointError(f"checkpoint {path} holds a {_describe(saved)}, not the {_describe(here)} "
                              "asked for")


def _describe(m: dict) -> str:
    return f"{m.get('arch')} network on {m.get('backbone')} with {m.get('num_classes')} age classes"
