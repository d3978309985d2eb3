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


def test_readme_is_one_page():
    # README is a product page; run diaries and recipe studies live in REPRODUCING.md and the chapters
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 16_000, f"README.md is {size:,} bytes; keep it to 16,000"


# Lowest first; a module may import its own layer and those below it, never one above.
LAYERS = [{"io", "runtime"}, {"config"}, {"data", "figures", "harness"}, {"model"}, {"resolve", "variants"}, {"training"},
          {"evaluation", "explain", "deploy"}, {"explore", "shipped"},
          {"chapters", "runner", "cli", "__init__", "__main__"}]


def _package_imports(path: Path) -> set[str]:
    """The top-level fadenet units (subpackage or module) that ``path`` imports relatively."""
    import ast
    parts = path.relative_to(ROOT / "fadenet").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(parts[:-1])[:len(parts) - node.level] if node.level > 1 else list(parts[:-1])
            target = base + (node.module.split(".") if node.module else [])
            found |= {target[0]} if target else {alias.name for alias in node.names}
    return found


def test_no_module_imports_a_layer_above_its_own():
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    upward = []
    for path in (ROOT / "fadenet").rglob("*.py"):
        unit = path.relative_to(ROOT / "fadenet").with_suffix("").parts[0]
        assert unit in layer, f"{unit} has no layer in LAYERS"
        upward += [f"{path.relative_to(ROOT)} imports {target}" for target in _package_imports(path)
                   if target in layer and layer[target] > layer[unit]]
    assert not upward, upward
