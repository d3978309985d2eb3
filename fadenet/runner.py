"""Run the numbered notebooks in order with papermill, headless, in a real Jupyter kernel."""
from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

import nbformat
import pandas as pd

from .config import ROOT, load_config

NOTEBOOKS = ROOT / "notebooks"
log = logging.getLogger("fadenet.reproduce")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""


def numbered_notebooks(only: list[str] | None = None, folder: Path = NOTEBOOKS) -> list[Path]:
    """``NN_*.ipynb`` in number order, optionally only those whose number or name is given."""
    found = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return found
    unknown = [k for k in only if not any(nb.name.startswith(k) for nb in found)]
    if unknown:
        raise NotebookFailed(f"no notebook in {folder} matches {', '.join(unknown)} "
                             f"(give numbers such as 03 or names such as 03_training)")
    return [nb for nb in found if any(nb.name.startswith(k) for k in only)]


def reproduce(profile: str | None = None, overrides: list[str] | tuple = (), only: list[str] | None = None,
              inplace: bool = False, folder: Path = NOTEBOOKS) -> Path:
    """Execute the notebooks; executed copies go to ``runs/reproduce-<profile>-<time>/notebooks/``.

    ``inplace=True`` also writes each executed notebook back into ``notebooks/`` (without the
    injected parameters cell), which is how the committed reference outputs are refreshed.
    """
    import papermill as pm
    from tqdm.auto import tqdm

    cfg = load_config(profile, *overrides)  # fails here, before any notebook, on a bad override
    notebooks = numbered_notebooks(only, folder)
    if not notebooks:
        raise NotebookFailed(f"no notebooks matching NN_*.ipynb in {folder}")
    run_dir = cfg.runs_path / f"reproduce-{cfg.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    _log_to(run_dir / "reproduce.log")
    cfg.save(run_dir / "config.yaml")
    log.info("profile %s, %d notebooks, output in %s", cfg.profile, len(notebooks), run_dir)
    for nb in tqdm(notebooks, desc=f"reproduce ({cfg.profile})", unit="notebook"):
        out = out_dir / nb.name
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out), parameters={"profile": cfg.profile, "overrides": list(overrides)},
                                cwd=str(folder), progress_bar=True, log_output=False)
        except pm.PapermillExecutionError as e:
            cell = _cell_number(out, e.cell_index)
            message = (f"notebook {nb.name} failed in cell {cell} (execution count {e.exec_count}): "
                       f"{e.ename}: {e.evalue.splitlines()[0] if e.evalue else ''}\n"
                       f"executed copy with the full traceback: {out}")
            log.error(message)
            raise NotebookFailed(message) from None
        log.info("%s done in %.0f s", nb.name, time.perf_counter() - start)
        if inplace:
            _write_back(out, nb)
    if only is None:
        save_times(run_dir, cfg)
    return run_dir


DONE = re.compile(r"^(\S+) .* fadenet\.reproduce: (\d\d_\S+)\.ipynb done in (\d+) s$")


def chapter_times(run_dir: Path) -> pd.DataFrame:
    """Wall seconds of each notebook of a reproduce run (from its log), with the total."""
    rows = [(m.group(2), int(m.group(3))) for line in (run_dir / "reproduce.log").read_text().splitlines()
            if (m := DONE.match(line))]
    table = pd.DataFrame(rows, columns=["notebook", "seconds"])
    seconds = int(table["seconds"].sum())
    total = pd.DataFrame([(f"total ({seconds / 60:.1f} min)", seconds)], columns=table.columns)
    return pd.concat([table, total], ignore_index=True)


def save_times(run_dir: Path, cfg) -> Path:
    """``figures/tables/reproduce_times``: how long each chapter of a whole run took, and where."""
    from .figures import save_table
    from .harness import machine_text
    caption = f"python -m fadenet reproduce --profile {cfg.profile} ({run_dir.name}); {machine_text()}"
    return save_table(chapter_times(run_dir), "reproduce_times", cfg, caption)


def _cell_number(executed: Path, index: int) -> str:
    """1-based cell number in the source notebook (papermill's index counts its injected cell)."""
    try:
        cells = nbformat.read(executed, as_version=4).cells
        injected = any("injected-parameters" in c.metadata.get("tags", []) for c in cells[:index])
        return str(index + 1 - injected)
    except (OSError, ValueError):
        return str(index + 1)


def _write_back(executed: Path, original: Path) -> None:
    nb = nbformat.read(executed, as_version=4)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for c in nb.cells:
        c.metadata.pop("papermill", None)
        c.metadata.pop("execution", None)
        if c.cell_type == "code":  # progress bars and other widget views render nothing without a kernel
            c.outputs = [o for o in c.outputs if WIDGET_VIEW not in o.get("data", {})]
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)  # the saved state of those progress bars
    tmp = original.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    shutil.move(tmp, original)


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("fadenet").addHandler(handler)
    logging.getLogger("fadenet").setLevel(logging.INFO)
