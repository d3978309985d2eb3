"""README's results section is generated from the notebooks' tables, never typed by hand."""
import subprocess
import sys

import pandas as pd
import pytest

from fadenet.config import ROOT, load_config
from fadenet.figures import (HEADLINE_END, HEADLINE_START, RESULTS_END, RESULTS_START, ReportError, headline,
                             markdown_table, reproducing_markdown, results_markdown, save_table, update_readme)


def test_the_report_copies_each_table_with_its_heading_and_caption(tmp_path):
    cfg = load_config("smoke", f"figures_dir={tmp_path / 'figures'}")
    save_table(pd.DataFrame({"model": ["seed 42"], "test MAE, TTA none": [-0.5]}), "05_seed_table", cfg, "made here")
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n{HEADLINE_START}\nold line\n{HEADLINE_END}\n\n## Results\n{RESULTS_START}\nold text\n"
                      f"{RESULTS_END}\n\n## After\nkept\n")
    assert update_readme(cfg, readme) == 1
    text = readme.read_text()
    assert "old text" not in text and text.endswith("## After\nkept\n") and text.startswith("# title")
    section = text.split(RESULTS_START)[1].split(RESULTS_END)[0]
    assert "#### Test-time augmentation and the seed ensemble (notebook 05)" in section and "| seed 42 | -0.500 |" in section
    assert "_made here_" in section
    assert "Training (notebook 03)" not in section, "absent tables are skipped"
    assert "old line" not in text and "No shipped model measured yet" in text


def test_the_headline_is_the_shipped_models_test_row(tmp_path):
    cfg = load_config("smoke", f"figures_dir={tmp_path / 'figures'}")
    rows = [{"split": s, "TTA": t, "faces": 1333, "MAE": mae, "95% low": mae - 0.2, "95% high": mae + 0.25, "CS@5": cs}
            for s, t, mae, cs in [("val", "none", 4.9, 0.6), ("test", "none", 4.5, 0.634), ("test", "flip", 4.41, 0.64)]]
    save_table(pd.DataFrame(rows), "00_shipped_model", cfg)
    assert headline(cfg) == ("**The shipped model estimates age within 4.50 years on average** (test MAE, 95% interval "
                             "4.30 to 4.75, 1,333 All-Age-Faces test faces; 63% within 5 years; 4.41 with flip TTA).")


def test_table_cells_round_to_three_decimals_without_a_negative_zero():
    table = markdown_table(pd.DataFrame({"MAE - FP32 MAE": [-0.0004, -0.02, 0.4286], "seed": [1337, 42, 7]}))
    assert table.splitlines()[2:] == ["| 0.000 | 1337 |", "| -0.020 | 42 |", "| 0.429 | 7 |"]


def test_a_readme_without_markers_is_one_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ReportError, match="has no markers"):
        update_readme(load_config("smoke"), readme)
    result = subprocess.run([sys.executable, "-m", "fadenet", "report", "--readme", str(readme)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {readme} has no markers")


def test_the_committed_readme_results_are_what_the_committed_tables_generate():
    text = (ROOT / "README.md").read_text()
    section = text.split(RESULTS_START)[1].split(RESULTS_END)[0].strip()
    assert section == results_markdown(load_config("reference")).strip(), \
        "README's results differ from figures/tables/: run `python -m fadenet report`"
    line = text.split(HEADLINE_START)[1].split(HEADLINE_END)[0].strip()
    assert line == headline(load_config("reference")), "README's headline differs: run `python -m fadenet report`"


def test_reproducing_lists_every_table_with_its_caption(tmp_path):
    cfg = load_config("smoke", f"figures_dir={tmp_path / 'figures'}")
    save_table(pd.DataFrame({"a": [1]}), "03_x", cfg, "data: AAF | profile reference | run r1")
    save_table(pd.DataFrame({"notebook": ["01"], "seconds": [9]}), "reproduce_times", cfg, "python -m fadenet reproduce")
    text = reproducing_markdown(cfg)
    assert "| [03_x](figures/tables/03_x.md) | data: AAF / profile reference / run r1 |" in text
    assert "## How long the last whole run took\n\n| notebook | seconds |" in text


def test_training_compute_counts_each_run_once_across_tables(tmp_path):
    from fadenet.figures import training_compute
    cfg = load_config("smoke", f"figures_dir={tmp_path / 'figures'}")
    save_table(pd.DataFrame({"run": ["a", "b", ""], "minutes": [30.0, 90.0, None],
                             "epoch_equivalents": [4.0, 12.0, None]}), "04_runs", cfg)
    save_table(pd.DataFrame({"run": ["b", "c"], "minutes": [90.0, 6.0], "epoch_equivalents": [12.0, 2.0]}), "05_runs", cfg)
    save_table(pd.DataFrame({"run": ["z"], "seconds": [1]}), "06_other", cfg)  # no compute columns: not read
    assert training_compute(cfg.figures_path / "tables").to_dict("records") == [
        {"table": "04_runs", "trainings": 2, "epoch-equivalents": 16.0, "hours": 2.0},
        {"table": "05_runs", "trainings": 1, "epoch-equivalents": 2.0, "hours": 0.1},
        {"table": "total", "trainings": 3, "epoch-equivalents": 18.0, "hours": 2.1}]


def test_quiet_machine_hours_divide_the_training_images_by_the_trainers_rate(tmp_path):
    from fadenet.figures import quiet_machine_hours
    cfg = load_config("smoke", f"figures_dir={tmp_path / 'figures'}")
    folder = cfg.figures_path / "tables"
    assert quiet_machine_hours(10.0, folder) == ""
    save_table(pd.DataFrame({"age group": ["0-9", "all ages"], "train": [100, 3600]}), "01_split_80-10-10", cfg)
    save_table(pd.DataFrame({"mode": ["old", "the trainer's default"], "images/s": ["50.0 (49-51)", "20.0 (19.5-21)"]}),
               "03_training_speed", cfg)
    # 10 epochs x 3,600 faces / 20 images/s = 1,800 s
    assert quiet_machine_hours(10.0, folder) == (
        "In compute: 10 epoch-equivalents of the 3,600-face training split, 0.04 M training images; at the "
        "trainer's 20 images/s measured in chapter 03 on this machine that is 0.5 hours of training steps on a "
        "quiet machine, before the evaluations.")


def test_the_committed_reproducing_is_what_the_tables_generate():
    assert (ROOT / "REPRODUCING.md").read_text() == reproducing_markdown(load_config("reference")), \
        "REPRODUCING.md differs from figures/tables/: run `python -m fadenet report`"


def test_readme_shows_the_chosen_columns_and_rows_of_a_table_under_its_caption(tmp_path):
    cfg = load_config("smoke", f"figures_dir={tmp_path / 'figures'}")
    effects = pd.DataFrame({"term": ["ca", "ca:spp"], "what": ["coordinate attention", "coordinate attention x SPP"],
                            "effect": [0.01, -0.02], "ci_low": [-0.03, -0.06], "ci_high": [0.05, 0.02],
                            "boot_low": [-0.04, -0.07], "boot_high": [0.06, 0.03], "p_holm": [1.0, 1.0],
                            "verdict": ["equivalent", "undecided"]})
    save_table(effects, "04_effects", cfg, "data: AAF | profile reference")
    section = results_markdown(cfg)
    assert section.splitlines()[2:6] == [
        "| what | effect | ci_low | ci_high | boot_low | boot_high | verdict |", "|---|---|---|---|---|---|---|",
        "| coordinate attention | 0.010 | -0.030 | 0.050 | -0.040 | 0.060 | equivalent |",
        "", ]
    assert section.endswith("_data: AAF | profile reference_") and "x SPP" not in section and "p_holm" not in section
