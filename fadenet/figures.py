"""Saving figures and tables, each labelled with the data and profile it was made from."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from PIL import Image as PILImage

from .config import Config
from .io import atomic_path

SOURCE_NAMES = {
    "afad": "AFAD-Full", "afad_lite": "AFAD-Lite", "aaf": "All-Age-Faces (AAF)", "utkface": "UTKFace",
    "synthetic": "SYNTHETIC procedural faces (not real people)",
}


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
        fig.text(0.5, 0.003, caption, ha="center", va="bottom", fontsize=7, color="0.35")
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


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    rows = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and abs(v) >= 1000:
        return f"{v:,}"
    return str(v)
