"""Packaging facts decided once: the Python version, the detector pin, the extras, and an
import that leaves the process alone."""
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata

from fadenet.config import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_python_version_comes_from_pyproject():
    lower = re.match(r">=(\d+\.\d+),", PROJECT["requires-python"]).group(1)
    env = (ROOT / "environment.yml").read_text()
    assert re.search(rf"- python={re.escape(lower)}\s", env), "environment.yml's python differs from pyproject.toml"
    made = subprocess.run(["make", "-n", "-B", "setup", "VENV=/nonexistent"], cwd=ROOT, capture_output=True, text=True)
    assert f"python{lower} -m venv" in made.stdout, made.stdout + made.stderr


def test_detector_is_an_ordinary_pinned_dependency():
    pins = dict(re.match(r"([\w-]+)==(\S+)", d).groups() for d in PROJECT["dependencies"])
    assert metadata.version("facenet-pytorch") == pins["facenet-pytorch"]
    needs = " ".join(metadata.requires("facenet-pytorch") or [])
    assert "torch" not in needs.replace("torchvision", ""), "this release pins torch: it would fight the torch pin"


def test_test_and_lab_tools_are_extras():
    runtime = {re.match(r"[\w-]+", d).group(0) for d in PROJECT["dependencies"]}
    assert not runtime & {"pytest", "nbval", "selenium", "jupyterlab"}
    extras = PROJECT["optional-dependencies"]
    assert {re.match(r"[\w-]+", d).group(0) for d in extras["test"]} == {"pytest", "nbval", "selenium"}
    assert [re.match(r"[\w-]+", d).group(0) for d in extras["lab"]] == ["jupyterlab"]
    assert '".[test,lab]"' in (ROOT / "environment.yml").read_text()
    # make test runs the JupyterLab tests, so it installs both extras
    made = subprocess.run(["make", "-n", "-B", "test", "VENV=/nonexistent"], cwd=ROOT, capture_output=True, text=True)
    assert '-e ".[test]"' in made.stdout and '-e ".[lab]"' in made.stdout, made.stdout + made.stderr


def test_import_changes_no_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    code = "import os, fadenet; print(sorted(k for k in os.environ if k.startswith('MALLOC_')))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
