"""ImageNet weights for the backbones, through torchvision's weights API and torch hub's
cache ($TORCH_HOME/hub/checkpoints/). Machines without a network use a file placed there
by hand; a download is only tried when the server answers within a few seconds."""
from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import threading
import urllib.request
import warnings
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, ModelConfig
from .backbones import AUTO, AUTO_ORDER, backbone as entry

PROBE_TIMEOUT = 5.0       # seconds the download server gets to answer a HEAD request
DOWNLOAD_TIMEOUT = 15.0   # seconds a stalled download may wait for data


class WeightsUnavailable(ConfigError):
    """model.pretrained=imagenet cannot be satisfied; the message says where to put the file."""


class RandomInitWarning(UserWarning):
    """The backbone starts from random weights although ImageNet weights were asked for."""


def weight_file(backbone: str) -> Path:
    """Where torch hub keeps (and looks for) the backbone's ImageNet file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _file_name(backbone)


def weights_downloadable(backbone: str) -> bool:
    """Whether the file's download server answers (asked once per process)."""
    return _answers(entry(backbone).weights.url)


def weights_obtainable(backbone: str) -> bool:
    """Cheap check: the file is in the hub cache, or it can be downloaded."""
    return weight_file(backbone).is_file() or weights_downloadable(backbone)


def resolve_backbone(cfg: ModelConfig) -> str:
    """The backbone for ``backbone=auto``: the first of AUTO_ORDER (MobileNetV3-Large, then
    MobileNetV2) whose ImageNet weights can be had, else the first from random weights. A named
    backbone is checked against the registry."""
    if cfg.backbone != AUTO:
        return entry(cfg.backbone).name
    if cfg.pretrained != "none":
        for candidate in AUTO_ORDER:
            if weights_obtainable(candidate):
                return candidate
    return AUTO_ORDER[0]


def load_imagenet_state(backbone: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of a torchvision classifier, or :class:`WeightsUnavailable`."""
    path = weight_file(backbone)
    if path.is_file():
        _check_hash(backbone, path)
    elif not weights_downloadable(backbone):
        raise WeightsUnavailable(_advice(backbone, f"{path} does not exist and the download "
                                                   "server cannot be reached (no network?)"))
    try:
        return _fetch(entry(backbone).weights.url)
    except Exception as error:  # download, hash and unpickling failures all end the same way
        raise WeightsUnavailable(_advice(backbone, f"{type(error).__name__}: {error}")) from error


def load_pretrained(model: nn.Module, backbone: str, mode: str) -> tuple[str, str]:
    """Load ImageNet weights into a torchvision classifier as ``mode`` (imagenet | auto | none)
    asks. Returns (``"imagenet"`` or ``"random"``, warning sentence or "")."""
    if mode == "none":
        return "random", ""
    try:
        state = load_imagenet_state(backbone)
        _load_strict(model, backbone, state)
    except WeightsUnavailable as error:
        if mode == "imagenet":
            raise WeightsUnavailable(f"model.pretrained=imagenet: {error} Or set model.pretrained "
                                     "to auto (random weights, with a warning) or none.") from error
        warning = (f"The {backbone} backbone started from RANDOM weights, not ImageNet: {error} "
                   "Results are not comparable with the paper's.")
        warnings.warn(warning, RandomInitWarning, stacklevel=3)
        return "random", warning
    return "imagenet", ""


def _load_strict(model: nn.Module, backbone: str, state: dict[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsUnavailable(_advice(backbone, f"{weight_file(backbone)} does not fit "
                                                   f"torchvision's {backbone}: {error}")) from error


def _fetch(url: str) -> dict[str, torch.Tensor]:
    # urllib has no timeout of its own here; a process-wide default bounds a stalled transfer.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        return torch.hub.load_state_dict_from_url(url, check_hash=True, progress=False,
                                                  map_location="cpu", weights_only=True)
    finally:
        socket.setdefaulttimeout(previous)


@functools.cache
def _answers(url: str) -> bool:
    # In a thread because a name lookup ignores socket timeouts and can hang on a dead resolver.
    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT).close()
            answered.append(True)
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT + 1)
    return bool(answered)


def _check_hash(backbone: str, path: Path) -> None:
    """torch hub verifies downloads only; a file placed by hand is checked here."""
    expected = re.search(torch.hub.HASH_REGEX, path.name).group(1)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise WeightsUnavailable(_advice(backbone, f"{path} is damaged or a different file: its "
                                                   f"sha256 starts {digest[:len(expected)]}, "
                                                   f"not {expected}"))


def _file_name(backbone: str) -> str:
    return os.path.basename(entry(backbone).weights.url)


def _advice(backbone: str, reason: str) -> str:
    torch_home = os.environ.get("TORCH_HOME") or "unset, so ~/.cache/torch"
    return (f"ImageNet weights for {backbone} ({entry(backbone).weights}) could not be loaded: {reason}. "
            f"Put torchvision's file {_file_name(backbone)} into {weight_file(backbone).parent} "
            f"($TORCH_HOME/hub/checkpoints/, TORCH_HOME={torch_home}).")
