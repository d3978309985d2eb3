"""Atomic file writes (a reader never sees a half-written cache, table or checkpoint), and paths
as outputs print them."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make shared results unreadable
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def shown_path(path: str | Path, places: list[tuple[str, str | Path]]) -> str:
    """``path`` as printed output shows it: relative to the first of ``places`` (label, folder)
    that holds it, as ``label/rest`` (just ``rest`` for an empty label), so that committed outputs
    name no folder of the machine that ran them; otherwise the path itself."""
    path = Path(path).expanduser().resolve()
    for label, folder in places:
        try:
            rest = path.relative_to(Path(folder).expanduser().resolve())
        except ValueError:
            continue
        return str(Path(label) / rest) if label else (str(rest) if rest.parts else ".")
    return str(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
