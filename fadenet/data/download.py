"""Download AFAD-Full / AFAD-Lite from the authors' GitHub repositories.

GitHub limits file sizes, so the authors cut each ``.tar.xz`` with ``split`` into pieces named
with split's default suffixes (``AFAD-Full.tar.xzaa``, ``AFAD-Full.tar.xzab``, ...) and restore it
with ``cat AFAD-Full.tar.xz* > AFAD-Full.tar.xz`` (their ``restore.sh``). Here every piece is
fetched into ``<data_root>/downloads/<variant>/`` with resume, the pieces are joined in name order,
the archive is checked and then unpacked into ``<data_root>/AFAD-Full`` (or ``AFAD-Lite``) in one
rename, so a dataset folder is either complete or absent.
"""
from __future__ import annotations

import hashlib
import http.client
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from .sources import FOLDERS

ATTEMPTS = 3          # per piece and run; a later run resumes where these stopped
CHUNK = 1 << 20
XZ_MAGIC = b"\xfd7zXZ\x00"


class DownloadError(RuntimeError):
    """AFAD could not be fetched or unpacked; the message says how to install it by hand."""


class _PieceMissing(DownloadError):
    """The server has no piece of that name (HTTP 404)."""


class _Interrupted(Exception):
    """The transfer of a piece stopped early; what arrived is kept and resumed."""


@dataclass(frozen=True)
class Variant:
    folder: str                    # dataset folder under the data root
    page: str                      # the repository people can download from by hand
    base_url: str                  # raw files of that repository
    known_pieces: tuple[str, ...]  # a prefix of split's sequence known to exist; more are probed for
    md5: str | None                # of the joined archive, as the first line of restore.sh gives it


def _next_piece(name: str) -> str | None:
    """The name split gives the piece after ``name`` (``...xzaz`` -> ``...xzba``); None after ``zz``."""
    stem, first, second = name[:-2], name[-2], name[-1]
    if second != "z":
        return f"{stem}{first}{chr(ord(second) + 1)}"
    return None if first == "z" else f"{stem}{chr(ord(first) + 1)}a"


def _pieces_up_to(stem: str, last_suffix: str) -> tuple[str, ...]:
    names = [f"{stem}aa"]
    while not names[-1].endswith(last_suffix):
        names.append(_next_piece(names[-1]))
    return tuple(names)


# Piece names: scripts that download the repository file by file list AFAD-Full.tar.xzaa ... xzbt
# (46 pieces); of AFAD-Lite the piece AFAD-Lite.tar.xzbb is known, so aa..bb exist (split numbers
# without gaps). Pieces after the known ones are probed for, so a longer list is still complete.
# The MD5s are the comments heading restore.sh in each repository.
VARIANTS = {
    "full": Variant(FOLDERS["afad"], "https://github.com/afad-dataset/tarball",
                    "https://raw.githubusercontent.com/afad-dataset/tarball/master",
                    _pieces_up_to("AFAD-Full.tar.xz", "bt"), "22ff8bcf4acf6e5911ff75a537d5ba91"),
    "lite": Variant(FOLDERS["afad_lite"], "https://github.com/afad-dataset/tarball-lite",
                    "https://raw.githubusercontent.com/afad-dataset/tarball-lite/master",
                    _pieces_up_to("AFAD-Lite.tar.xz", "bb"), "e0b3ac0d6017daa556cf49d911975f50"),
}


def download_afad(data_root: Path, variant: str = "full", base_url: str | None = None,
                  timeout: float = 10.0, progress: bool = True,
                  parts: list[str] | None = None) -> Path:
    """Fetch, join and unpack AFAD; returns ``<data_root>/AFAD-Full`` (or ``AFAD-Lite``).

    ``base_url`` defaults to the official repository of the variant; ``parts`` replaces its
    piece list (then no further pieces are probed for and no MD5 is checked). A dataset folder
    that already holds files is returned untouched. Any failure raises one ``DownloadError``
    whose message names the folder to fill by hand.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, not {variant!r}")
    spec = VARIANTS[variant]
    target = Path(data_root) / spec.folder
    if target.is_dir() and any(target.iterdir()):
        return target
    try:
        _download(spec, target, Path(data_root) / "downloads" / variant,
                  (base_url or spec.base_url).rstrip("/"), timeout, progress, parts)
    except DownloadError as exc:
        # One message with both what went wrong and the way around it, not a chain of tracebacks.
        raise DownloadError(f"{exc}\n{_by_hand(spec, target)}") from None
    return target


def _by_hand(spec: Variant, target: Path) -> str:
    stem = spec.known_pieces[0][:-2]
    return (f"To install {spec.folder} by hand: get every {stem}* piece from {spec.page}, join them "
            f"in name order (cat {stem}* > {stem}), unpack, and put the folder at {target} so that "
            f"it holds <age>/<111|112>/*.jpg; or set FADENET_DATA_ROOT to a folder that already "
            f"holds {spec.folder}/.")


def _download(spec: Variant, target: Path, downloads: Path, base_url: str, timeout: float,
              progress: bool, parts: list[str] | None) -> None:
    names = list(parts if parts is not None else spec.known_pieces)
    if not names:
        raise DownloadError("no pieces to download")
    _check_reachable(f"{base_url}/{names[0]}", timeout)
    downloads.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names, 1):
        _fetch_piece(f"{base_url}/{name}", downloads / name, timeout, progress, f"{name} ({i}/{len(names)})")
    if parts is None:
        names += _fetch_further_pieces(base_url, downloads, names[-1], timeout, progress)
    archive = downloads / f"{spec.folder}.tar.xz"
    try:
        _join([downloads / name for name in sorted(names)], archive,
              spec.md5 if parts is None else None)
        _check_archive(archive)
        _unpack(archive, target, progress)
    finally:
        archive.unlink(missing_ok=True)


def _check_reachable(url: str, timeout: float) -> None:
    """Fail within ``timeout`` seconds when the server cannot be reached.

    The request runs in a daemon thread because name lookups ignore socket timeouts: without
    a network a lookup can hang far longer than ``timeout``.
    """
    outcome: dict[str, BaseException | bool] = {}

    def ask_for_first_byte() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=0-0"}),
                                        timeout=timeout):
                outcome["ok"] = True
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # an empty piece: the server is there, the download says the rest
                outcome["ok"] = True
            else:
                outcome["error"] = exc
        except Exception as exc:  # handed to the waiting thread, which reports it
            outcome["error"] = exc

    thread = threading.Thread(target=ask_for_first_byte, name="afad-reachable", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in outcome:
        raise DownloadError(f"cannot get {url} ({_describe(outcome['error'])}).")
    if "ok" not in outcome:
        raise DownloadError(f"no answer from {url} within {timeout:g} s (no network?).")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _fetch_further_pieces(base_url: str, downloads: Path, last: str, timeout: float,
                          progress: bool) -> list[str]:
    """Pieces after the known ones, up to the first name the server does not have."""
    found = []
    name = _next_piece(last)
    while name is not None:
        try:
            _fetch_piece(f"{base_url}/{name}", downloads / name, timeout, progress, name)
        except _PieceMissing:
            break
        found.append(name)
        name = _next_piece(name)
    return found


def _fetch_piece(url: str, dest: Path, timeout: float, progress: bool, label: str) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming what earlier tries left."""
    if dest.exists():  # only complete pieces carry their final name
        return
    partial = dest.with_name(dest.name + ".part")
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _continue_download(url, partial, timeout, progress, label)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise _PieceMissing(f"{url} does not exist (HTTP 404).") from exc
            if exc.code < 500 and exc.code != 429:
                raise DownloadError(f"cannot download {url} ({_describe(exc)}).") from exc
            failure = exc
        except (_Interrupted, http.client.HTTPException, OSError) as exc:
            failure = exc
    else:
        kept = partial.stat().st_size if partial.exists() else 0
        raise DownloadError(f"downloading {url} failed {ATTEMPTS} times ({_describe(failure)}); "
                            f"{kept:,} bytes are kept in {partial} and the next run resumes there.")
    if partial.stat().st_size == 0:
        partial.unlink()
        raise DownloadError(f"{url} is empty.")
    os.replace(partial, dest)


def _continue_download(url: str, partial: Path, timeout: float, progress: bool, label: str) -> None:
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416:
            raise
        if _content_range(exc.headers)[1] == have:  # the piece was complete but not yet renamed
            return
        partial.unlink()
        raise _Interrupted("the server refused to resume; starting the piece again") from exc
    with response:
        if response.status == 206:
            start, total = _content_range(response.headers)
            if start != have:
                partial.unlink()
                raise _Interrupted(f"the server resumed at byte {start}, not {have}")
        else:  # the server ignored the Range header and sends the whole piece
            start, total = 0, _content_length(response.headers)
        with open(partial, "ab" if start else "wb") as out, \
                tqdm(total=total, initial=start, desc=label, unit="B", unit_scale=True,
                     unit_divisor=1024, leave=False, disable=not progress) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    size = partial.stat().st_size
    if total is not None and size != total:
        # http.client returns a short body without complaint when the connection drops.
        raise _Interrupted(f"got {size:,} of {total:,} bytes")


def _content_range(headers) -> tuple[int | None, int | None]:
    """(first byte, full size) from ``Content-Range: bytes 10-99/100`` or ``bytes */100``."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (headers.get("Content-Range") or "").strip())
    if not match:
        return None, None
    first, size = match.groups()
    return (int(first) if first else None), (int(size) if size != "*" else None)


def _content_length(headers) -> int | None:
    value = headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _join(pieces: list[Path], archive: Path, md5: str | None) -> None:
    digest = hashlib.md5(usedforsecurity=False)
    with open(archive, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as source:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
    if md5 is not None and digest.hexdigest() != md5:
        raise DownloadError(f"the joined archive has MD5 {digest.hexdigest()}, not {md5} as restore.sh "
                            f"records: a piece is damaged. Delete the pieces in {archive.parent} "
                            f"and run again.")


def _check_archive(archive: Path) -> None:
    with open(archive, "rb") as f:
        if f.read(len(XZ_MAGIC)) != XZ_MAGIC:
            raise DownloadError(f"{archive} is not an xz archive (a piece may be an error page); "
                                f"delete the pieces in {archive.parent} and run again.")
    try:
        with tarfile.open(archive, "r:xz") as tar:
            if tar.next() is None:
                raise DownloadError(f"{archive} holds no files.")
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise DownloadError(f"{archive} is not a readable tar.xz ({exc}).") from exc


def _unpack(archive: Path, target: Path, progress: bool) -> None:
    """Unpack beside ``target`` and rename into place, so an interruption leaves no half dataset."""
    for leftover in target.parent.glob(f".{target.name}.unpacking-*"):  # from a killed earlier run
        shutil.rmtree(leftover, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpacking-", dir=target.parent))
    try:
        _extract_safely(archive, scratch, progress)
        os.replace(_dataset_root(scratch), target)  # replaces an empty target folder, if any
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _extract_safely(archive: Path, into: Path, progress: bool) -> None:
    try:
        # Stream mode reads the archive once, front to back, however many members it has.
        with tarfile.open(archive, "r|xz") as tar, \
                tqdm(desc=f"unpacking {archive.name}", unit=" files", disable=not progress) as bar:
            for member in tar:
                _refuse_unsafe(member)
                tar.extract(member, into, filter="data")
                bar.update()
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        raise DownloadError(f"cannot unpack {archive} ({exc}); it may be incomplete.") from exc


def _refuse_unsafe(member: tarfile.TarInfo) -> None:
    """Images come as plain files in folders; anything else could write outside the target."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
        raise DownloadError(f"refusing to unpack {member.name!r}: only plain files and folders "
                            f"inside the dataset folder are allowed.")


def _dataset_root(scratch: Path) -> Path:
    """The archive's single top folder (whatever its name), else the unpacked files themselves."""
    visible = [p for p in scratch.iterdir() if not p.name.startswith(".")]
    if len(visible) == 1 and visible[0].is_dir() and not visible[0].name.isdigit():
        return visible[0]
    return scratch
