"""A training run's folder: what is written there, by whom, and how it is read back.

``runs/<run id>/`` holds ``config.yaml`` (the resolved configuration), ``meta.json`` (status,
data, initialisation, results), ``log.csv`` (one row per epoch), ``batches.csv`` (one row per
batch), TensorBoard events in ``tb/``, ``train.log``, ``last.pt`` (the full training state,
after every epoch), ``best.pt`` (the EMA weights of the best validation epoch) and
``test_predictions.csv`` (those weights' prediction for every test face). Files are written
atomically and only by the main process of a data-parallel group.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import yaml

from ..config import Config, config_from_dict
from ..io import atomic_path, atomic_write_text
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint_file

log = logging.getLogger("fadenet.train")


@dataclass
class Run:
    """A run as read back from its folder."""
    folder: Path
    meta: dict
    history: pd.DataFrame

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    @property
    def config(self) -> Config:
        """The resolved configuration the run was trained with."""
        return config_from_dict(yaml.safe_load((self.folder / "config.yaml").read_text()))


def load_run(folder: Path) -> Run:
    meta = json.loads((folder / "meta.json").read_text())
    history = pd.read_csv(folder / "log.csv") if (folder / "log.csv").is_file() else pd.DataFrame()
    return Run(folder, meta, history)


def finished_run(folder: Path) -> Run | None:
    """The run in ``folder`` if it finished, else None."""
    if (folder / "meta.json").is_file() and load_run(folder).meta.get("status") == "finished":
        return load_run(folder)
    return None


class RunFolder:
    """The writer of one run's folder; every write is a no-op in the processes that are not
    ``main``, so the trainer calls them alike on every rank."""

    def __init__(self, path: Path, main: bool = True):
        self.path, self.main = path, main

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def open(self, cfg: Config) -> None:
        """Create the folder, log to its ``train.log`` and save the configuration."""
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._log_to_file()
        cfg.save(self.path / "config.yaml")

    def writer(self, purge_step: int):
        """TensorBoard's writer (from ``purge_step`` on, so a resumed run does not repeat steps)."""
        if not self.main:
            return _NoWriter()
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(self.path / "tb"), purge_step=purge_step)

    def log_epoch(self, writer, row: dict, epochs: int, best: bool) -> None:
        """One finished epoch: its scalars to TensorBoard, one line to the log."""
        for key in ("train_loss", "val_loss", "train_mae", "val_mae", "lr"):
            writer.add_scalar(f"epoch/{key}", row[key], row["epoch"] - 1)
        if self.main:
            log.info("epoch %d/%d: train loss %.4f, val MAE %.3f%s (%.0f s)", row["epoch"], epochs,
                     row["train_loss"], row["val_mae"], " (best)" if best else "", row["seconds"])

    def save_checkpoint(self, name: str, cfg: Config, meta: dict, source: str, epoch: int,
                        weights: dict, **extra) -> None:
        """Plain data only (config and metadata as dicts, tensors), written atomically."""
        if not self.main:
            return
        state = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "meta": dict(meta),
                 "data_source": source, "epoch": epoch + 1, "model": weights, **extra}
        with atomic_path(self.path / name) as tmp:
            torch.save(state, tmp)

    def load_checkpoint(self, name: str, expect: Config) -> dict:
        return load_checkpoint_file(self.path / name, expect=expect)

    def write_history(self, history: list[dict]) -> None:
        if self.main:
            atomic_write_text(self.path / "log.csv", pd.DataFrame(history).to_csv(index=False))

    def append_batches(self, rows: list[tuple]) -> None:
        """One row per batch: (epoch, batch, step, loss, lr)."""
        if not self.main:
            return
        path = self.path / "batches.csv"
        pd.DataFrame(rows, columns=["epoch", "batch", "step", "loss", "lr"]).to_csv(
            path, mode="a", header=not path.is_file(), index=False)

    def keep_batches_before(self, epoch: int) -> None:
        """Drop the batch rows of epochs from ``epoch`` on (those of an interrupted epoch)."""
        path = self.path / "batches.csv"
        if not self.main or not path.is_file():
            return
        if epoch == 0:
            path.unlink()
            return
        kept = pd.read_csv(path)
        kept[kept["epoch"] < epoch].to_csv(path, index=False)

    def write_test_predictions(self, table: pd.DataFrame) -> None:
        if self.main:
            atomic_write_text(self.path / "test_predictions.csv", table.to_csv(index=False, float_format="%.4f"))

    def write_meta(self, meta: dict) -> None:
        if self.main:
            atomic_write_text(self.path / "meta.json", json.dumps(meta, indent=1))

    def close(self, every_run: bool = False) -> None:
        """Stop logging to this run's ``train.log`` (``every_run``: to any run's), so that the next
        run of the process logs to its own file only."""
        root = logging.getLogger("fadenet")
        mine = str((self.path / "train.log").resolve())
        for handler in [h for h in root.handlers if getattr(h, "run_log", False)]:
            if every_run or handler.baseFilename == mine:
                root.removeHandler(handler)
                handler.close()

    def _log_to_file(self) -> None:
        self.close(every_run=True)  # e.g. an earlier run of this process that was interrupted
        handler = logging.FileHandler(self.path / "train.log")
        handler.run_log = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("fadenet").addHandler(handler)
        logging.getLogger("fadenet").setLevel(logging.INFO)


class _NoWriter:
    """TensorBoard's writer for the processes that do not write (all but rank 0)."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass
