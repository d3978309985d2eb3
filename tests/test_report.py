"""README's results section is generated from the notebooks' tables, never typed by hand."""
import subprocess
import sys

import pandas as pd
import pytest

from fadenet.config import ROOT, load_config
from fadenet.figures import RESULTS_END, markdown_table, RESULTS_START, ReportError, results_markdown, save_table, update_readme


def test_the_report_copies_each_table_with_its_heading_and_caption(tmp_path):
    cfg = load_config("smoke", f"figures_dir={tmp_path / 'figures'}")
    save_table(pd.DataFrame({"idea": ["spp"], "effect (years)": [-0.5]}), "04_effects", cfg, "made here")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n## Results\n{RESULTS_START}\nold text\n{RESULTS_END}\n\n## After\nkept\n")
    assert update_readme(cfg, readme) == 1
    text = readme.read_text()
    assert "old text" not in text and text.endswith("## After\nkept\n") and text.startswith("# title")
    section = text.split(RESULTS_START)[1].split(RESULTS_END)[0]
    assert "#### What each idea does (notebook 04)" in section and "| spp | -0.500 |" in section
    assert "_made here_" in section
    assert "Training (notebook 03)" not in section, "absent tables are skipped"


def test_table_cells_round_to_three_decimals_without_a_negative_zero():
    table = markdown_table(pd.DataFrame({"MAE - FP32 MAE": [-0.0004, -0.02, 0.4286], "seed": [1337, 42, 7]}))
    assert table.splitlines()[2:] == ["| 0.000 | 1337 |", "| -0.020 | 42 |", "| 0.429 | 7 |"]


def test_a_readme_without_markers_is_one_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ReportError, match="has no results markers"):
        update_readme(load_config("smoke"), readme)
    result = subprocess.run([sys.executable, "-m", "fadenet", "report", "--readme", str(readme)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {readme} has no results markers")


def test_the_committed_readme_results_are_what_the_committed_tables_generate():
    text = (ROOT / "README.md").read_text()
    section = text.split(RESULTS_START)[1].split(RESULTS_END)[0].strip()
    assert section == results_markdown(load_config("reference")).strip(), \
        "README's results differ from figures/tables/: run `python -m fadenet report`"
