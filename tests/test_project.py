"""Project files that must agree with each other."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
