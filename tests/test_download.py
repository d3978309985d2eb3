"""AFAD download: pieces, resume, join, checks and unpacking, against a local HTTP server."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import re
import shutil
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fadenet.data import download
from fadenet.data.download import DownloadError, download_afad

STEM = "AFAD-Full.tar.xz"
PIECES = [f"{STEM}aa", f"{STEM}ab", f"{STEM}ac"]
_RNG = random.Random(11)
FACES = {  # path inside AFAD-Full -> bytes; random bytes (seeded) so that xz cannot shrink them
    f"{age}/{sex}/{n}.jpg": _RNG.randbytes(6000)
    for age, sex, n in [(15, 111, "a"), (15, 112, "b"), (38, 111, "c"), (38, 112, "d")]
}


class PieceServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files = files
        self.requests: list[tuple[str, str | None]] = []  # (name, Range header)
        self.ignore_range = False
        self.drop_once: dict[str, int] = {}  # name -> bytes sent before the connection drops

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def ranges_asked(self, name: str) -> list[str | None]:
        return [r for n, r in self.requests if n == name]


class RangeHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        server: PieceServer = self.server
        name, wanted = self.path.lstrip("/"), self.headers.get("Range")
        server.requests.append((name, wanted))
        body = server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted or "")
        if match and not server.ignore_range:
            first = int(match[1])
            last = min(int(match[2]) if match[2] else len(body) - 1, len(body) - 1)
            if first >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(body)}")
            body = body[first:last + 1]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:server.drop_once.pop(name, len(body))])

    def log_message(self, *args):  # keep pytest output clean
        pass


def tar_xz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def afad_archive() -> bytes:
    """A tiny AFAD-Full as the authors pack it: one top folder, plus a stray .DS_Store."""
    members = [file_member(".DS_Store", b"mac")]
    members += [file_member(f"AFAD-Full/{path}", data) for path, data in FACES.items()]
    return tar_xz(members)


def split3(data: bytes) -> dict[str, bytes]:
    cut = len(data) // 3
    return dict(zip(PIECES, [data[:cut], data[cut:2 * cut], data[2 * cut:]]))


@pytest.fixture
def serve():
    servers = []

    def start(files: dict[str, bytes]) -> PieceServer:
        server = PieceServer(files)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(root: Path, server: PieceServer, **kw) -> Path:
    return download_afad(root, base_url=server.url, timeout=5, progress=False,
                         parts=kw.pop("parts", PIECES), **kw)


def assert_fake_afad(folder: Path) -> None:
    found = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.jpg")}
    assert found == FACES


def test_download_joins_and_unpacks(tmp_path, serve):
    server = serve(split3(afad_archive()))
    folder = fetch(tmp_path, server)
    assert folder == tmp_path / "AFAD-Full"
    assert_fake_afad(folder)
    downloads = tmp_path / "downloads" / "full"
    assert sorted(p.name for p in downloads.iterdir()) == PIECES  # pieces kept, archive gone
    assert not list(tmp_path.glob(".AFAD-Full.unpacking-*"))


def test_resume_asks_for_the_rest_of_a_piece(tmp_path, serve):
    pieces = split3(afad_archive())
    server = serve(pieces)
    downloads = tmp_path / "downloads" / "full"
    downloads.mkdir(parents=True)
    (downloads / f"{PIECES[1]}.part").write_bytes(pieces[PIECES[1]][:100])
    assert_fake_afad(fetch(tmp_path, server))
    assert server.ranges_asked(PIECES[1]) == ["bytes=100-"]


def test_finished_pieces_are_not_fetched_again(tmp_path, serve):
    server = serve(split3(afad_archive()))
    folder = fetch(tmp_path, server)
    server.requests.clear()
    shutil.rmtree(folder)  # lose the dataset, keep the pieces
    assert_fake_afad(fetch(tmp_path, server))
    assert server.requests == [(PIECES[0], "bytes=0-0")]  # only the reachability check


def test_server_that_ignores_range_restarts_the_piece(tmp_path, serve):
    pieces = split3(afad_archive())
    server = serve(pieces)
    server.ignore_range = True
    downloads = tmp_path / "downloads" / "full"
    downloads.mkdir(parents=True)
    (downloads / f"{PIECES[0]}.part").write_bytes(b"x" * 50)  # would corrupt it if appended to
    assert_fake_afad(fetch(tmp_path, server))
    assert (downloads / PIECES[0]).read_bytes() == pieces[PIECES[0]]


def test_dropped_connection_is_resumed(tmp_path, serve):
    server = serve(split3(afad_archive()))
    server.drop_once[PIECES[2]] = 700
    assert_fake_afad(fetch(tmp_path, server))
    assert server.ranges_asked(PIECES[2]) == [None, "bytes=700-"]


def test_pieces_after_the_known_ones_are_found(tmp_path, serve, monkeypatch):
    archive = afad_archive()
    server = serve(split3(archive))
    official = dataclasses.replace(download.VARIANTS["full"], base_url=server.url,
                                   known_pieces=tuple(PIECES[:2]),
                                   md5=hashlib.md5(archive).hexdigest())
    monkeypatch.setitem(download.VARIANTS, "full", official)
    assert_fake_afad(download_afad(tmp_path, timeout=5, progress=False))
    assert f"{STEM}ad" in [name for name, _ in server.requests]  # probed, found missing


def test_wrong_md5_refuses_to_unpack(tmp_path, serve, monkeypatch):
    server = serve(split3(afad_archive()))
    official = dataclasses.replace(download.VARIANTS["full"], base_url=server.url,
                                   known_pieces=tuple(PIECES), md5="0" * 32)
    monkeypatch.setitem(download.VARIANTS, "full", official)
    with pytest.raises(DownloadError, match="MD5"):
        download_afad(tmp_path, timeout=5, progress=False)
    assert not (tmp_path / "AFAD-Full").exists()


def test_existing_dataset_is_returned_without_network(tmp_path):
    folder = tmp_path / "AFAD-Full" / "20" / "111"
    folder.mkdir(parents=True)
    (folder / "x.jpg").write_bytes(b"jpg")
    assert download_afad(tmp_path, base_url=f"http://127.0.0.1:{closed_port()}",
                         progress=False) == tmp_path / "AFAD-Full"


@pytest.mark.parametrize("base_url", [f"http://127.0.0.1:{closed_port()}", "http://afad.invalid"])
def test_unreachable_server_fails_fast_and_says_where_to_put_the_data(tmp_path, base_url):
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        download_afad(tmp_path, base_url=base_url, timeout=2, progress=False)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert str(tmp_path / "AFAD-Full") in message
    assert "FADENET_DATA_ROOT" in message and "<age>/<111|112>/*.jpg" in message
    assert not (tmp_path / "downloads").exists()


def test_hanging_lookup_is_cut_off_at_the_timeout(tmp_path, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: release.wait(30))
    started = time.monotonic()
    try:
        with pytest.raises(DownloadError, match="within 1 s"):
            download_afad(tmp_path, timeout=1, progress=False)
    finally:
        release.set()
    assert time.monotonic() - started < 3


def test_missing_piece_is_one_clear_error(tmp_path, serve):
    server = serve(split3(afad_archive()))
    with pytest.raises(DownloadError, match=r"AFAD-Full\.tar\.xzzz does not exist"):
        fetch(tmp_path, server, parts=PIECES + [f"{STEM}zz"])
    assert not (tmp_path / "AFAD-Full").exists()


@pytest.mark.parametrize("pieces", [{PIECES[0]: b"<html>rate limited</html>"}, {PIECES[0]: b""}])
def test_pieces_that_are_not_an_archive_are_refused(tmp_path, serve, pieces):
    server = serve(pieces)
    with pytest.raises(DownloadError, match="not an xz archive|is empty"):
        fetch(tmp_path, server, parts=[PIECES[0]])
    assert not (tmp_path / "AFAD-Full").exists()


def test_truncated_archive_leaves_no_half_dataset(tmp_path, serve):
    pieces = split3(afad_archive())
    server = serve(pieces)
    with pytest.raises(DownloadError, match="cannot unpack"):
        fetch(tmp_path, server, parts=PIECES[:2])
    assert not (tmp_path / "AFAD-Full").exists()
    assert not list(tmp_path.glob(".AFAD-Full.unpacking-*"))


def symlink_member() -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo("AFAD-Full/15/111/link.jpg")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info, None


@pytest.mark.parametrize("evil", [
    file_member("../evil", b"pwned"),
    file_member("AFAD-Full/../../evil", b"pwned"),
    file_member("/tmp/fadenet-evil", b"pwned"),
    symlink_member(),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink"])
def test_unsafe_members_are_refused(tmp_path, serve, evil):
    root = tmp_path / "root"
    members = [file_member("AFAD-Full/15/111/a.jpg", b"ok"), evil]
    server = serve({PIECES[0]: tar_xz(members)})
    with pytest.raises(DownloadError, match="refusing to unpack"):
        fetch(root, server, parts=[PIECES[0]])
    assert not (root / "AFAD-Full").exists()
    assert not list(root.glob(".AFAD-Full.unpacking-*"))
    assert not (root / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/fadenet-evil").exists()


def test_unknown_variant_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="variant"):
        download_afad(tmp_path, variant="medium")


def test_known_piece_names_follow_split():
    full = download.VARIANTS["full"].known_pieces
    assert (full[0], full[25], full[26], full[-1], len(full)) == (
        "AFAD-Full.tar.xzaa", "AFAD-Full.tar.xzaz", "AFAD-Full.tar.xzba", "AFAD-Full.tar.xzbt", 46)
    assert download.VARIANTS["lite"].known_pieces[-1] == "AFAD-Lite.tar.xzbb"


def test_download_command_offline_is_an_error_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    from fadenet import cli

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert cli.main(["download", "afad", f"data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(tmp_path / "AFAD-Full") in err and "by hand" in err
