"""The papermill runner and the JupyterLab server, with real kernels and a real server."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from fadenet.cli import build_parser, parse_args
from fadenet.config import load_config
from fadenet.runner import NotebookFailed, chapter_times, numbered_notebooks, reproduce

pytestmark = pytest.mark.slow


def _notebook(path, *sources):
    cells = [new_code_cell("profile = None\noverrides = []", metadata={"tags": ["parameters"]})]
    cells += [new_code_cell(s) for s in sources]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_notebooks_run_in_number_order_with_profile_and_overrides(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    log = tmp_path / "order.txt"
    for name in ("02_second", "01_first", "10_tenth"):
        _notebook(book / f"{name}.ipynb",
                  f"open({str(log)!r}, 'a').write('{name} ' + profile + ' ' + ','.join(overrides) + '\\n')")
    (book / "notes.ipynb").write_text("not numbered, never run")
    run = reproduce("smoke", ["train.epochs=2"], folder=book)
    assert log.read_text().splitlines() == [
        "01_first smoke train.epochs=2", "02_second smoke train.epochs=2", "10_tenth smoke train.epochs=2"]
    assert sorted(p.name for p in (run / "notebooks").iterdir()) == [
        "01_first.ipynb", "02_second.ipynb", "10_tenth.ipynb"]
    assert (run / "config.yaml").is_file() and (run / "reproduce.log").is_file()
    # a whole run records how long each chapter took, from its own log
    times = chapter_times(run)
    assert list(times["notebook"])[:3] == ["01_first", "02_second", "10_tenth"]
    assert times["notebook"].iloc[3] == f"total ({times['seconds'].iloc[3] / 60:.1f} min)"
    assert times["seconds"].iloc[-1] == times["seconds"].iloc[:-1].sum()
    table = load_config("smoke").figures_path / "tables" / "reproduce_times.md"
    assert run.name in table.read_text() and "10_tenth" in table.read_text()


def test_failure_names_notebook_and_cell_and_stops(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    _notebook(book / "01_ok.ipynb", "x = 1")
    _notebook(book / "02_bad.ipynb", "y = 2", "raise ValueError('broken on purpose')")
    _notebook(book / "03_never.ipynb", f"open({str(tmp_path / 'ran')!r}, 'w')")
    with pytest.raises(NotebookFailed) as err:
        reproduce("smoke", folder=book)
    message = str(err.value)
    assert "02_bad.ipynb" in message and "cell 3" in message and "broken on purpose" in message
    assert not (tmp_path / "ran").exists()


def test_cli_exits_non_zero_with_one_line(tmp_path):
    env = dict(os.environ, FADENET_PROFILE="smoke")
    result = subprocess.run([sys.executable, "-m", "fadenet", "reproduce", "train.epochs=-3"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: train.epochs=-3 must be at least 0"]


def test_only_selects_by_number_or_name_and_rejects_what_matches_nothing(tmp_path):
    for name in ("01_first", "02_second", "03_third"):
        _notebook(tmp_path / f"{name}.ipynb")
    picked = numbered_notebooks(["03", "01_first"], tmp_path)
    assert [nb.name for nb in picked] == ["01_first.ipynb", "03_third.ipynb"]
    with pytest.raises(NotebookFailed, match="matches 04, 2nd"):
        numbered_notebooks(["01", "04", "2nd"], tmp_path)


def test_overrides_after_only_are_overrides_not_notebook_names():
    args = parse_args(build_parser(), ["reproduce", "--only", "03", "04", "train.epochs=2", "--profile", "smoke"])
    assert args.only == ["03", "04"] and args.overrides == ["train.epochs=2"]
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["reproduce", "--only", "train.epochs=2"])


def test_repository_notebooks_are_numbered_chapters():
    names = [nb.name for nb in numbered_notebooks()]
    assert names and names[0] == "01_data_preparation.ipynb"
    for nb in numbered_notebooks():
        cells = nbformat.read(nb, as_version=4).cells
        tagged = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{nb.name} needs exactly one papermill parameters cell"
        assert "profile = None" in tagged[0].source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_serves_the_notebooks(tmp_path):
    port, token = _free_port(), "fadenet-test-token"
    root = numbered_notebooks()[0].parent
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        listing = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/api/contents/?token={token}", timeout=2) as r:
                    listing = json.load(r)
                break
            except OSError:
                assert server.poll() is None, "JupyterLab exited during start-up"
                time.sleep(0.5)
        assert listing is not None, "JupyterLab did not answer within 60 s"
        names = {item["name"] for item in listing["content"]}
        assert "01_data_preparation.ipynb" in names
        with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=5) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
        request = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST", data=b"")
        urllib.request.urlopen(request, timeout=5)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
