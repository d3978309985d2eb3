"""The paper's training recipe as one resumable run of a resolved configuration.

:func:`train` resolves the configuration, finds a finished run of it again instead of training
twice, and otherwise builds the parts (:func:`fadenet.training.recipe.build_parts`) and hands
them to a :class:`Trainer`, in as many processes as ``train.processes`` resolves to. What the
run folder holds is :mod:`fadenet.training.run`.

Every source of randomness of epoch e is seeded from (seed, e), so a run killed mid-epoch and
started again resumes from its last checkpoint and ends exactly where an uninterrupted run
would have.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data import FaceSet, Split, load_split, prepare
from ..data.loader import mixup
from ..harness import machine_text
from ..model import age_spread, count_parameters, expected_age, predict, predict_probs
from ..resolve import Resolved, resolve
from ..runtime import CompiledOrEager
from . import parallel
from .budget import ComputeMeter, stage_size
from .recipe import Parts, build_parts, lr_at
from .loss import label_sigma, target_distribution
from .run import Run, RunFolder, finished_run, load_run

log = logging.getLogger("fadenet.train")


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the last good checkpoint is kept."""


def train(cfg: Config, faces: FaceSet | None = None, split: Split | None = None,
          progress: bool = True) -> Run:
    """Train (or resume, or reuse the finished run of) the configured model, in as many
    processes as ``train.processes`` resolves to (see :mod:`fadenet.training.parallel`)."""
    setup = resolve(cfg)
    cfg, folder = setup.config, setup.run_folder
    if (done := finished_run(folder)) is not None:
        log.info("reusing finished run %s", folder)
        return done
    group = parallel.current_group()
    if not group.main:
        group.barrier()  # under torchrun, rank 0 builds the cache and the split; the others then read them
    faces = faces or prepare(cfg, progress=progress and group.main)
    split = split or load_split(faces, cfg)
    if group.main:
        group.barrier()
    processes = group.world if group.world > 1 else parallel.process_count(cfg)
    if processes > 1 and group.world == 1:
        try:
            parallel.spawn(_train_in_group, processes, setup, faces, split, progress)
        except RuntimeError:
            run = load_run(folder) if (folder / "meta.json").is_file() else None
            if run is not None and run.meta.get("status") == "diverged":
                raise TrainingDiverged(run.meta["error"]) from None
            raise
        return load_run(folder)
    parallel.use_threads(cfg, group.world)
    return Trainer.build(setup, faces, split, progress, group).fit()


def _train_in_group(setup: Resolved, faces: FaceSet, split: Split, progress: bool) -> None:
    group = parallel.current_group()
    parallel.use_threads(setup.config, group.world)
    Trainer.build(setup, faces, split, progress and group.main, group).fit()


class Trainer:
    """One process's part of a run: it receives the built parts and a run folder; ``group``
    says which of the data-parallel processes this is (by default the only one)."""

    def __init__(self, setup: Resolved, parts: Parts, faces: FaceSet, split: Split, folder: RunFolder,
                 device: torch.device, progress: bool = True, group: parallel.Group | None = None):
        self.cfg, self.faces, self.split, self.folder, self.progress = setup.config, faces, split, folder, progress
        self.device, self.group = device, group or parallel.Group()
        self.parts = parts
        self.model, self.ema, self.optimizer, self.scaler = parts.model, parts.ema, parts.optimizer, parts.scaler
        self.loss, self.batches = parts.loss, parts.batches
        t = self.cfg.train
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self.net = self.model  # what the step calls: the model, wrapped for data parallelism and compiled
        if self.group.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)
        if t.compile == "true" or (t.compile == "auto" and device.type == "cuda"):
            self.net = CompiledOrEager(self.net)
        self.compute = ComputeMeter(self.model, len(split.train))
        self.steps_per_epoch = len(self.batches)
        self.total_steps = self.steps_per_epoch * t.epochs
        self.warmup_steps = int(round(t.warmup_epochs * self.steps_per_epoch))
        self.frozen = self.model.pretrained_parameters() if t.freeze_epochs > 0 else []
        self.history: list[dict] = []
        self.best_mae, self.best_epoch, self.start_epoch = math.inf, -1, 0

    @property
    def compiled(self) -> bool:
        """Whether the step runs compiled (False again after a failed compile)."""
        return isinstance(self.net, CompiledOrEager) and self.net.compiled

    @classmethod
    def build(cls, setup: Resolved, faces: FaceSet, split: Split, progress: bool = True,
              group: parallel.Group | None = None, folder: Path | None = None) -> "Trainer":
        """A trainer of ``setup`` with its parts built, in its run folder unless ``folder`` says otherwise."""
        group = group or parallel.Group()
        device = setup.device
        if device.type == "cuda" and group.world > 1:
            device = torch.device("cuda", torch.cuda.current_device())
        parts = build_parts(setup, faces, split, device, group.rank, group.world)
        return cls(setup, parts, faces, split, RunFolder(folder or setup.run_folder, group.main), device,
                   progress, group)

    # ---- the run ------------------------------------------------------------------------
    def fit(self) -> Run:
        """Train to the last epoch (rank 0 writes the run folder; the others only compute)."""
        main = self.group.main
        self.folder.open(self.cfg)
        self.group.barrier()
        self._resume()
        if main:
            self._write_meta("running")
            log.info("training in %d process(es) of %d thread(s), %s%s, on %s", self.group.world,
                     torch.get_num_threads(), self.cfg.train.precision, ", compiled" if self.compiled else "", self.device)
        writer = self.folder.writer(purge_step=self.start_epoch * self.steps_per_epoch)
        started = time.perf_counter()
        try:
            for epoch in range(self.start_epoch, self.cfg.train.epochs):
                row = self._epoch(epoch, writer)
                self.history.append(row)
                improved = row["val_mae"] < self.best_mae
                if improved:
                    self.best_mae, self.best_epoch = row["val_mae"], epoch
                    self._save_best(epoch)
                self._save_last(epoch)
                self.group.barrier()  # checkpoints written before any process reads them
                self.folder.log_epoch(writer, row, self.cfg.train.epochs, improved)
                out_of_time = bool(self.cfg.train.max_minutes) and \
                    time.perf_counter() - started > 60 * self.cfg.train.max_minutes
                if self.group.any(out_of_time):  # all processes stop after the same epoch
                    log.info("time budget of %.1f minutes reached after epoch %d", self.cfg.train.max_minutes, epoch + 1)
                    break
        except TrainingDiverged as e:
            if main:
                self._write_meta("diverged", error=str(e))
            raise
        finally:
            writer.close()
        try:
            self._finish()
        finally:
            self.folder.close()
        self.group.barrier()
        return load_run(self.folder.path)

    def _epoch(self, epoch: int, writer) -> dict:
        t, model = self.cfg.train, self.model
        torch.manual_seed(t.seed * 1_000_003 + epoch + 7_919 * self.group.rank)  # dropout
        frozen = epoch < t.freeze_epochs and bool(self.frozen)
        for p in self.frozen:
            p.requires_grad_(not frozen)
        model.train()
        if frozen:  # frozen ImageNet layers keep their BatchNorm statistics too
            model.freeze_batchnorm(self.frozen)
        size = stage_size(t.sizes, epoch, t.epochs, self.faces.size)
        self.batches.set_epoch(epoch, size)
        rank = self.group.rank  # each process draws its own label noise and mixup; rank 0 as a single process would
        gen = torch.Generator().manual_seed(t.seed * 7919 + epoch + 104_729 * rank)
        rng = np.random.default_rng([t.seed, epoch] + ([rank] if rank else []))
        losses, maes, rows = [], [], []
        start = time.perf_counter()
        bar = tqdm(self.batches, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
                   disable=not (self.progress and self.group.main))
        for b, (x, ages, _) in enumerate(bar):
            step = epoch * self.steps_per_epoch + b
            lr = lr_at(step, self.total_steps, self.warmup_steps, t.lr, t.min_lr_ratio, t.schedule)
            self.parts.set_lr(lr)
            loss, mae = self._step(self._input(x), ages.to(self.device), gen, rng, epoch, b)
            losses.append(loss)
            if mae is not None:
                maes.append(mae)
            rows.append((epoch, b, step, loss, lr))
            writer.add_scalar("batch/loss", loss, step)
            bar.set_postfix(loss=f"{loss:.3f}")
        seconds = time.perf_counter() - start
        self.folder.append_batches(rows)
        val_loss, val_mae = self.validate()
        train_mae = self.group.mean(torch.tensor(np.mean(maes) if maes else float("nan")))
        done = self.history[-1].get("epoch_equivalents", math.nan) if self.history else 0.0
        return {"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)), "train_mae": train_mae,
                "val_loss": val_loss, "val_mae": val_mae, "frozen_backbone": frozen, "size": size,
                "epoch_equivalents": done + self.compute.epoch_equivalents(len(losses) * t.batch_size, size),
                "seconds": round(seconds, 2), "images_per_second": round(len(losses) * t.batch_size / seconds, 1)}

    def _step(self, x, ages, gen, rng, epoch, b):
        t, cfg = self.cfg.train, self.cfg
        k = cfg.model.num_classes
        sigma = label_sigma(ages, cfg.loss, k, jitter=True, generator=gen).to(self.device)
        target = target_distribution(ages, sigma, k)
        weights = self.loss.sample_weights(ages)
        mixed = t.mixup_alpha > 0 and rng.random() < t.mixup_prob
        if mixed:
            x, target, ages, weights, _ = mixup(x, target, ages, weights, t.mixup_alpha, rng)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            logits = self.net(x)
        loss, _ = self.loss(logits.float(), target, ages, weights)  # the loss in FP32 whatever the precision
        value = self.group.mean(loss)  # the batch's loss over all processes: all stop together if it diverges
        if not math.isfinite(value):
            kept = (f"the last good checkpoint is {self.folder.last} (epoch {len(self.history)})"
                    if self.history else "no checkpoint was written yet")
            raise TrainingDiverged(f"the loss became {value} in epoch {epoch + 1}, batch {b + 1}; "
                                   f"training stopped; {kept}; try a lower train.lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update_parameters(self.model)
        mae = None if mixed else (predict(logits.detach().float())[1] - ages).abs().mean().item()
        return value, mae

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, memory_format=self.parts.memory_format)

    def validate(self, rows: np.ndarray | None = None) -> tuple[float, float]:
        """(loss, MAE) of the EMA weights on the validation rows (no augmentation, no TTA)."""
        rows = self.split.val if rows is None else rows
        return self._scores(rows, self._probs(rows))

    def _probs(self, rows: np.ndarray) -> np.ndarray:
        """The EMA weights' age distributions of ``rows``, every process predicting its share."""
        self.group.broadcast_state(self.ema.module)  # one model, whichever process validates which faces
        mine = predict_probs(self.ema.module, self.faces.images, self.group.share(rows), batch_size=256,
                             device=self.device, precision=self.cfg.train.precision)
        return self.group.gather(mine, len(rows))

    @torch.no_grad()
    def _scores(self, rows: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
        ages = torch.as_tensor(self.faces.ages[rows], dtype=torch.float32)
        k = self.cfg.model.num_classes
        target = target_distribution(ages, label_sigma(ages, self.cfg.loss, k, jitter=False), k)
        logp = torch.log(torch.as_tensor(probs).clamp_min(1e-12))
        loss, _ = self.loss(logp.to(self.device), target.to(self.device), ages.to(self.device))
        return float(loss), float(np.abs(expected_age(probs) - ages.numpy()).mean())

    # ---- state --------------------------------------------------------------------------
    def _checkpoint(self, name: str, epoch: int, weights: dict, **extra) -> None:
        self.folder.save_checkpoint(name, self.cfg, self.model.meta, self.faces.source, epoch, weights, **extra)

    def _save_last(self, epoch: int) -> None:
        state = self.parts.state_dict()
        self._checkpoint("last.pt", epoch, state.pop("model"), **state, best_val_mae=self.best_mae,
                         best_epoch=self.best_epoch, history=self.history)
        self.folder.write_history(self.history)

    def _save_best(self, epoch: int) -> None:
        # the EMA weights are the ones validated, so they are the ones kept
        self._checkpoint("best.pt", epoch, self.ema.module.state_dict(), val_mae=self.best_mae)

    def _resume(self) -> None:
        if not self.folder.last.is_file():
            self.folder.keep_batches_before(0)
            return
        state = self.folder.load_checkpoint("last.pt", expect=self.cfg)
        self.parts.load_state_dict(state)
        self.best_mae, self.best_epoch = state["best_val_mae"], state["best_epoch"]
        self.history = list(state["history"])
        self.start_epoch = state["epoch"]
        self.folder.keep_batches_before(self.start_epoch)  # drop the rows of the epoch that was interrupted
        if self.group.main:
            log.info("resuming %s after epoch %d", self.folder.path.name, self.start_epoch)

    def _finish(self) -> None:
        best = self.folder.load_checkpoint("best.pt", expect=self.cfg)
        self.ema.module.load_state_dict(best["model"])
        test_loss, test_mae = float("nan"), float("nan")
        if len(self.split.test):
            rows = self.split.test
            probs = self._probs(rows)
            test_loss, test_mae = self._scores(rows, probs)
            # per face, for intervals over test faces (the ablation's bootstrap)
            self.folder.write_test_predictions(pd.DataFrame({
                "row": rows, "face": self.faces.table["path"].to_numpy()[rows], "age": self.faces.ages[rows],
                "predicted": expected_age(probs), "std": age_spread(probs)}))
        if self.group.main:
            self._write_meta("finished", test_mae=test_mae, test_loss=test_loss)

    def _write_meta(self, status: str, **extra) -> None:
        meta = {"status": status, "run_id": self.folder.path.name, "profile": self.cfg.profile,
                **self.model.meta, "source": self.faces.source, "images": len(self.faces),
                "split": self.split.protocol, "fold": self.split.fold, "train": len(self.split.train),
                "val": len(self.split.val), "test": len(self.split.test), "trained_on": len(self.parts.train_rows),
                "size": self.faces.size,
                "parameters": count_parameters(self.model),
                "precision": self.cfg.train.precision, "compiled": self.compiled, "processes": self.group.world,
                "threads_per_process": torch.get_num_threads(), "machine": machine_text(),
                "epochs_done": len(self.history), "best_epoch": self.best_epoch + 1,
                "epoch_equivalents": self.history[-1].get("epoch_equivalents", math.nan) if self.history else 0.0,
                "best_val_mae": None if math.isinf(self.best_mae) else self.best_mae,
                "train_seconds": round(sum(r["seconds"] for r in self.history), 1), **extra}
        self.folder.write_meta(meta)
