"""Project files that must agree with each other."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    python = next(d for d in conda if d.startswith("python="))
    assert python == "python=3.11" and ">=3.11,<3.12" in project["requires-python"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip, "environment.yml must install the package itself"
    pinned = dict(re.match(r"([A-Za-z0-9_.-]+)==(.+)", d).groups() for d in project["dependencies"])
    for line in pip:
        m = re.match(r"([A-Za-z0-9_.-]+)==(.+)", line)
        if m:
            assert pinned.get(m.group(1)) == m.group(2), f"{line} disagrees with pyproject.toml"


def test_every_dependency_is_pinned_and_torch_is_the_local_release():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in d for d in deps), [d for d in deps if "==" not in d]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    cv = next(d for d in deps if d.startswith("opencv"))
    assert cv.split("==")[1].startswith("4."), "opencv 5 ships no Haar cascades"


def test_readme_gives_the_two_fresh_machine_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
