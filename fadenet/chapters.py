"""What every chapter's first cell does, in one call: ``ch = fadenet.chapter(profile, overrides)``.

The configuration (profile, then the notebook's overrides), the prepared faces and their split,
and the provenance line that captions the chapter's figures and tables.
"""
from __future__ import annotations

from typing import NamedTuple

from .config import Config, load_config
from .data import FaceSet, Split, load_split, prepare
from .figures import provenance


class Chapter(NamedTuple):
    """Unpacks as ``cfg, faces, split, caption = fadenet.chapter(profile, overrides)``."""
    cfg: Config
    faces: FaceSet | None     # None for chapters that read their faces from a checkpoint
    split: Split | None
    caption: str              # data, size, split and profile: every figure's caption starts here


def chapter(profile: str | None = None, overrides=(), data: bool = True, show: bool = True) -> Chapter:
    """The chapter's configuration and, with ``data``, its faces and split (built on first
    use, reused after). ``show`` prints the one line that says what the chapter runs on."""
    cfg = load_config(profile, *overrides)
    faces = prepare(cfg) if data else None
    split = load_split(faces, cfg) if data else None
    caption = provenance(cfg, faces.source, len(faces)) if data else f"profile {cfg.profile}"
    if show:
        print(f"profile {cfg.profile}; {caption}" if data else caption)
    return Chapter(cfg, faces, split, caption)
