"""Saving figures and tables, each labelled with the data and profile it was made from."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from PIL import Image as PILImage

from .config import Config
from .data.sources import SOURCE_NAMES
from .io import atomic_path

def provenance(cfg: Config, source: str, images: int | None = None) -> str:
    """One line naming the data, its size, the split protocol and the profile."""
    count = f", {images:,} images" if images is not None else ""
    return (f"data: {SOURCE_NAMES.get(source, source)}{count} | split {cfg.data.split} | "
            f"{cfg.data.size}px | profile {cfg.profile}")


def save_figure(fig: plt.Figure, name: str, cfg: Config, caption: str | None = None):
    """Save ``fig`` as PNG under the profile's figures folder and close it.

    Returns a small preview image (what a notebook cell shows), so that notebooks kept in git
    carry light outputs while the full-resolution figure lives in ``figures/``.
    """
    if caption:
        # below the axes, never over their labels: the tight bounding box takes it in
        fig.text(0.5, -0.005, caption, ha="center", va="top", fontsize=7, color="0.35")
    path = cfg.figures_path / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    preview = _preview(fig)
    plt.close(fig)
    return preview


def _preview(fig: plt.Figure, dpi: int = 72, max_png_bytes: int = 120_000):
    """PNG at screen resolution; photo-heavy figures that stay large become JPEG."""
    from IPython.display import Image
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if buf.tell() <= max_png_bytes:
        return Image(data=buf.getvalue(), format="png")
    buf.seek(0)
    jpeg = io.BytesIO()
    PILImage.open(buf).convert("RGB").save(jpeg, format="jpeg", quality=80)
    return Image(data=jpeg.getvalue(), format="jpeg")


def save_table(df: pd.DataFrame, name: str, cfg: Config, caption: str = "") -> Path:
    """Write ``figures/tables/<name>.csv`` and ``.md``; the Markdown carries the caption."""
    folder = cfg.figures_path / "tables"
    with atomic_path(folder / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=False)
    md = markdown_table(df) + (f"\n\n_{caption}_\n" if caption else "\n")
    with atomic_path(folder / f"{name}.md") as tmp:
        tmp.write_text(md)
    return folder / f"{name}.md"


# Columns of identifiers, not quantities: printed as they are (seed 1337, not 1,337).
ID_COLUMNS = {"seed", "fold", "rotation", "epoch", "batch"}


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    rows = [[str(v) if c in ID_COLUMNS else _cell(v) for c, v in zip(cols, row)]
            for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        # z: a value that rounds to zero prints 0.000, not -0.000
        return f"{v:z.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and abs(v) >= 1000:
        return f"{v:,}"
    return str(v)


# The tables README's results section collects, in order, under these headings (absent ones
# are skipped, so the section grows as chapters are run): name, heading, and the columns and the
# rows (a pandas query) README shows where it shows less than the whole table. Only what a user
# of the model asks; how a recipe was chosen stays in its chapter, so README stays one page.
RESULT_TABLES = [
    ("00_shipped_model", "The shipped model (python -m fadenet ship)", None, None),
    ("04_effects", "What each idea does: the 2^4 factorial (notebook 04)",
     ["what", "effect", "ci_low", "ci_high", "boot_low", "boot_high", "verdict"], "not term.str.contains(':')"),
    ("04_budget_transfer", "FADE-Net minus the baseline, longer training (notebook 04)",
     ["epoch_equivalents", "baseline_test_mae", "fadenet_test_mae", "fadenet_minus_baseline", "verdict"], None),
    ("05_seed_table", "Test-time augmentation and the seed ensemble (notebook 05)", None, None),
    ("07_targets", "Speed and INT8 targets (notebook 07)", None, None),
]


def _result_table(folder: Path, name: str, columns: list[str] | None, rows: str | None) -> str:
    """A table as README shows it: the notebook's Markdown, or the chosen columns and rows of its
    CSV under the same caption."""
    md = (folder / f"{name}.md").read_text().strip()
    if columns is None and rows is None:
        return md
    table = pd.read_csv(folder / f"{name}.csv")
    if rows:
        table = table.query(rows, engine="python")
    caption = md.rsplit("\n\n", 1)[1] if "\n\n" in md else ""
    return markdown_table(table[columns or list(table.columns)]) + (f"\n\n{caption}" if caption else "")


class ReportError(RuntimeError):
    """README cannot take the generated results; the message says why."""


RESULTS_START = "<!-- results: generated by `python -m fadenet report` from figures/tables/; do not edit -->"
RESULTS_END = "<!-- end of generated results -->"


def results_markdown(cfg: Config) -> str:
    """README's results section: each table of :data:`RESULT_TABLES` found under the profile's
    figures folder, with its heading and the caption its notebook wrote."""
    folder = cfg.figures_path / "tables"
    parts = [f"#### {heading}\n\n{_result_table(folder, name, columns, rows)}"
             for name, heading, columns, rows in RESULT_TABLES if (folder / f"{name}.md").is_file()]
    return "\n\n".join(parts) or "_No results yet: run the notebooks (`make reproduce`)._"


HEADLINE_START, HEADLINE_END = "<!-- headline: generated by `python -m fadenet report` -->", "<!-- end of headline -->"


def headline(cfg: Config) -> str:
    """README's one-sentence result: the shipped model's test accuracy, from its table."""
    path = cfg.figures_path / "tables" / "00_shipped_model.csv"
    if not path.is_file():
        return "_No shipped model measured yet (`python -m fadenet ship`)._"
    acc = pd.read_csv(path).set_index(["split", "TTA"])
    test, flip = acc.loc[("test", "none")], acc.loc[("test", "flip")]
    return (f"**The shipped model estimates age within {test['MAE']:.2f} years on average** (test MAE, 95% "
            f"interval {test['95% low']:.2f} to {test['95% high']:.2f}, {int(test['faces']):,} All-Age-Faces test "
            f"faces; {test['CS@5']:.0%} within 5 years; {flip['MAE']:.2f} with flip TTA).")


def _replace_between(text: str, start: str, end: str, body: str, where: Path) -> str:
    if start not in text or end not in text:
        raise ReportError(f"{where} has no markers {start!r} ... {end!r}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def update_readme(cfg: Config, readme: Path) -> int:
    """Rewrite README's headline and results section from the tables; returns the tables written."""
    body = results_markdown(cfg)
    text = _replace_between(readme.read_text(), RESULTS_START, RESULTS_END, body, readme)
    text = _replace_between(text, HEADLINE_START, HEADLINE_END, headline(cfg), readme)
    with atomic_path(readme) as tmp:
        tmp.write_text(text)
    return body.count("#### ")


REPRODUCING_INTRO = """# Reproducing the committed results

Generated by `python -m fadenet report` from `figures/tables/`; do not edit.

The committed notebooks, figures and tables come from the reference profile:

```bash
make reproduce PROFILE=reference      # every chapter; outputs written back into notebooks/
python -m fadenet reproduce --profile reference --only 03 --inplace   # one chapter
```

Training runs are found again by their resolved configuration, so a second call, or one after
an interruption, trains only what is missing (an interrupted training resumes from its last
epoch). Chapters can be refreshed one at a time, so the tables below may come from different
runs and recipes: each one's caption says which profile, checkpoint or run made it."""


def training_compute(folder: Path) -> pd.DataFrame:
    """The trainings the committed tables read: every CSV under ``folder`` with ``run``,
    ``minutes`` and ``epoch_equivalents`` columns, each run counted once (in the first table, by
    name, that lists it), then the total."""
    rows, seen = [], set()
    for path in sorted(folder.glob("*.csv")):
        table = pd.read_csv(path)
        if not {"run", "minutes", "epoch_equivalents"} <= set(table.columns):
            continue
        new = table[table["run"].notna() & (table["run"] != "") & ~table["run"].isin(seen)].drop_duplicates("run")
        seen |= set(new["run"])
        if len(new):
            rows.append({"table": path.stem, "trainings": len(new), "epoch-equivalents": round(new["epoch_equivalents"].sum(), 1),
                         "hours": round(new["minutes"].sum() / 60, 2)})
    out = pd.DataFrame(rows, columns=["table", "trainings", "epoch-equivalents", "hours"])
    if len(out):
        out.loc[len(out)] = {"table": "total", "trainings": out["trainings"].sum(),
                             "epoch-equivalents": round(out["epoch-equivalents"].sum(), 1), "hours": round(out["hours"].sum(), 2)}
    return out


def quiet_machine_hours(epoch_equivalents: float, folder: Path) -> str:
    """The trainings' compute as hours of training steps on a quiet machine: epoch-equivalents x
    faces of the training split (chapter 01's split table) / the trainer's own images/s (the last
    row of chapter 03's speed table); empty where either table is missing."""
    split, speed = folder / "01_split_80-10-10.csv", folder / "03_training_speed.csv"
    if not (split.is_file() and speed.is_file()):
        return ""
    faces = int(pd.read_csv(split).iloc[-1]["train"])
    rate = float(str(pd.read_csv(speed).iloc[-1]["images/s"]).split()[0])
    hours = epoch_equivalents * faces / rate / 3600
    return (f"In compute: {epoch_equivalents:g} epoch-equivalents of the {faces:,}-face training split, "
            f"{epoch_equivalents * faces / 1e6:.2f} M training images; at the trainer's {rate:g} images/s measured "
            f"in chapter 03 on this machine that is {hours:.1f} hours of training steps on a quiet machine, before "
            f"the evaluations.")


def reproducing_markdown(cfg: Config) -> str:
    """REPRODUCING.md: how to re-run, how long the last whole run took, and the provenance
    line of every committed table."""
    folder = cfg.figures_path / "tables"
    parts = [REPRODUCING_INTRO]
    times = folder / "reproduce_times.md"
    if times.is_file():
        parts.append(f"## How long the last whole run took\n\n{times.read_text().strip()}")
    compute = training_compute(folder)
    if len(compute) > 1:
        parts.append("## The trainings behind the tables\n\nEach training once, however many tables read it "
                     "(a whole run reuses finished trainings; these minutes are their own, on the machine "
                     f"each ran on):\n\n{markdown_table(compute)}\n\n"
                     + quiet_machine_hours(float(compute.iloc[-1]["epoch-equivalents"]), folder))
    rows = []
    for md in sorted(folder.glob("*.md")):
        lines = md.read_text().strip().splitlines()
        caption = lines[-1].strip("_") if lines and lines[-1].startswith("_") else ""
        rows.append(f"| [{md.stem}](figures/tables/{md.name}) | {caption.replace('|', '/')} |")
    parts.append("## Where each committed table came from\n\n| table | made by |\n|---|---|\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"

