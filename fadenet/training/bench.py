"""``python -m fadenet bench train``: how fast the trainer's step runs in each of its modes.

Every mode is the real training step (batches from the cache, augmentation, loss, clipping,
EMA) of a :class:`Trainer` built with that mode's settings; the modes take turns in
:func:`fadenet.harness.interleaved` rounds. The trainer's default mode and the same step with
plain (unfused) AdamW are also timed as a bare step (forward, backward and AdamW on one fixed
batch), so that the table says how much of the step the loop around it costs.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from ..config import Config
from ..data import FaceSet, Split
from ..harness import interleaved
from ..resolve import Resolved, resolve
from ..runtime import pick_device, usable_cores
from . import parallel
from .trainer import Trainer

# name -> settings; every mode names all of them, so none inherits the profile's choice
PLAIN, DEFAULT = "channels-last, plain AdamW", "the trainer's default (auto)"  # the two modes chapter 03 compares
_FP32 = {"train.precision": "fp32", "train.compile": "false", "train.processes": 1}
MODES: dict[str, dict] = {
    "eager FP32, NCHW": {**_FP32, "train.channels_last": False, "train.fused_adamw": False},
    PLAIN: {**_FP32, "train.channels_last": True, "train.fused_adamw": False},
    "channels-last, fused AdamW": {**_FP32, "train.channels_last": True, "train.fused_adamw": True},
    "channels-last, bf16 autocast": {**_FP32, "train.channels_last": True, "train.fused_adamw": False,
                                     "train.precision": "bf16"},
    "channels-last, torch.compile": {**_FP32, "train.channels_last": True, "train.fused_adamw": False,
                                     "train.compile": "true"},
    "channels-last, one process per core": {**_FP32, "train.channels_last": True, "train.fused_adamw": False,
                                            "train.processes": "cores", "train.threads": 1},
    DEFAULT: {},
}
BARE = (PLAIN, DEFAULT)
# one GPU runs one training process: the CPU's process-per-core mode has no meaning there
CPU_ONLY = ("channels-last, one process per core",)
SLOW = 5.0  # a mode whose step (after the first two) takes this many times the first mode's: one step a round


@dataclass
class ModeResult:
    name: str
    settings: str                 # what the mode resolved to
    rates: list[float]            # images/s of each round
    first_seconds: float          # the first two steps (torch.compile compiles in them)
    cpu_use: float                # CPU seconds per second of wall time during the timed rounds
    steps: int                    # steps per round
    bare: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return float(np.median(self.rates))


def device_modes(cfg: Config, words: list[str] | None = None) -> list[str]:
    """The modes that mean something on the device ``cfg`` trains on (on a GPU, bf16 autocast is
    its automatic mixed precision), those whose names contain one of ``words`` if given."""
    gpu = pick_device(cfg.train.device).type == "cuda"
    return [m for m in MODES if not (gpu and m in CPU_ONLY) and (not words or any(w in m for w in words))]


def training_modes(cfg: Config, faces: FaceSet, split: Split, modes: list[str] | None = None,
                   steps: int = 6, rounds: int = 3) -> list[ModeResult]:
    """Images/s of each mode's real training step (see the module's text), ``rounds`` rounds of
    ``steps`` steps each."""
    runners, results, probe = {}, {}, {}
    try:
        for name in modes or device_modes(cfg):
            runner = _runner(resolve(cfg.replaced(_settings(MODES[name], cfg))), faces, split)
            runners[name] = runner
            first = runner.run("loop", 2)[0]
            results[name] = ModeResult(name, runner.describe(), [], first, 0.0, steps)
            probe[name] = runner.run("loop", 1)[0]
        for name, r in results.items():
            if probe[name] > SLOW * next(iter(probe.values())):
                r.steps = 1
        timed = {name: _turn(r, runners[name], bare=name in BARE) for name, r in results.items()}
        for name, turns in interleaved(timed, rounds).items():
            rates, cpu_seconds, seconds, bare = zip(*turns)
            r = results[name]
            r.rates, r.cpu_use = list(rates), sum(cpu_seconds) / sum(seconds)
            r.bare = [b for b in bare if b is not None]
    finally:
        for runner in runners.values():
            runner.close()
    return list(results.values())


def _turn(result: ModeResult, runner, bare: bool):
    """A mode's turn in a round: images/s of its loop, its CPU and wall seconds, and (``bare``)
    images/s of its bare step."""
    images = result.steps * runner.batch_size

    def call() -> tuple[float, float, float, float | None]:
        seconds, cpu_seconds = runner.run("loop", result.steps)
        return images / seconds, cpu_seconds, seconds, images / runner.run("bare", result.steps)[0] if bare else None
    return call


def _settings(mode: dict, cfg: Config) -> dict:
    """The mode's overrides, with "cores" processes made the most processes, at most one per
    core, that the batch divides among."""
    if mode.get("train.processes") != "cores":
        return mode
    n = max(k for k in range(1, usable_cores() + 1) if cfg.train.batch_size % k == 0)
    return {**mode, "train.processes": n}


def _runner(setup: Resolved, faces: FaceSet, split: Split):
    n = parallel.process_count(setup.config)
    return _Steps(setup, faces, split) if n == 1 else _Pool(setup, faces, split, n)


class _Steps:
    """A trainer that runs n loop or bare steps on command (in this process, or in a pool worker)."""

    def __init__(self, setup: Resolved, faces: FaceSet, split: Split, group: parallel.Group | None = None):
        cfg = setup.config
        self.group = group or parallel.Group()
        parallel.use_threads(cfg, self.group.world)
        self.trainer = Trainer.build(setup, faces, split, progress=False, group=self.group,
                               folder=cfg.runs_path / "bench-train")  # writes nothing
        self.trainer.model.train()
        self.batch_size = cfg.train.batch_size
        self._epoch, self._batches = 0, iter(())
        self.gen, self.rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
        share = cfg.train.batch_size // self.group.world
        self.x = self.trainer._input(torch.randn(share, 3, cfg.data.size, cfg.data.size))
        self.target = torch.softmax(torch.randn(share, cfg.model.num_classes, device=self.trainer.device), 1)

    def describe(self) -> str:
        t = self.trainer
        parts = ["channels-last" if t.parts.memory_format == torch.channels_last else "NCHW", t.cfg.train.precision,
                 "fused AdamW" if t.cfg.train.fused_adamw else "AdamW", "compiled" if t.compiled else "eager",
                 f"{self.group.world} x {torch.get_num_threads()} threads"]
        return ", ".join(parts)

    def run(self, kind: str, n: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of n steps."""
        self.group.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            self._loop_step() if kind == "loop" else self._bare_step()
        if self.trainer.device.type == "cuda":  # kernels run asynchronously: time them to the end
            torch.cuda.synchronize(self.trainer.device)
        self.group.barrier()
        return time.perf_counter() - start, time.process_time() - cpu

    def _next_batch(self):
        for _ in range(2):
            try:
                return next(self._batches)
            except StopIteration:
                self._epoch += 1
                self.trainer.batches.set_epoch(self._epoch)
                self._batches = iter(self.trainer.batches)
        raise RuntimeError("the training split has fewer faces than one batch")

    def _loop_step(self) -> None:
        x, ages, _ = self._next_batch()
        t = self.trainer
        t._step(t._input(x), ages.to(t.device), self.gen, self.rng, 0, 0)

    def _bare_step(self) -> None:
        t = self.trainer
        with torch.autocast(t.device.type, dtype=t.autocast_dtype or torch.float32,
                            enabled=t.autocast_dtype is not None):
            logits = t.net(self.x)
        loss = -(F.log_softmax(logits.float(), 1) * self.target).sum(1).mean()
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.optimizer.step()

    def close(self) -> None:
        pass


class _Pool:
    """``_Steps`` in n data-parallel processes; ``run`` returns the wall time seen from here and
    the CPU time of all of them."""

    def __init__(self, setup: Resolved, faces: FaceSet, split: Split, n: int):
        self.batch_size = setup.config.train.batch_size
        self._tmp = tempfile.TemporaryDirectory(prefix="fadenet-bench-")
        ctx = mp.get_context("spawn")
        pipes = [ctx.Pipe() for _ in range(n)]
        self.conns = [here for here, _ in pipes]
        self.context = parallel.start(_pool_worker, n, Path(self._tmp.name), setup, faces, split,
                                      [there for _, there in pipes])
        self.description = self._receive()[0]

    def _receive(self) -> list:
        return [conn.recv() for conn in self.conns]

    def describe(self) -> str:
        return self.description

    def run(self, kind: str, n: int) -> tuple[float, float]:
        start = time.perf_counter()
        for conn in self.conns:
            conn.send((kind, n))
        replies = self._receive()
        return time.perf_counter() - start, sum(cpu for _, cpu in replies)

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        while not self.context.join():
            pass
        self._tmp.cleanup()


def _pool_worker(setup: Resolved, faces: FaceSet, split: Split, conns: list) -> None:
    steps = _Steps(setup, faces, split, parallel.current_group())
    conn = conns[steps.group.rank]
    conn.send(steps.describe())
    while (command := conn.recv()) is not None:
        conn.send(steps.run(*command))


COMPARED = [PLAIN, DEFAULT]  # chapter 03's table


def modes_frame(results: list[ModeResult]) -> pd.DataFrame:
    """One row per mode: median images/s of the rounds (their range), the ratio to the first
    mode, CPU cores kept busy, the first two steps' seconds (compiling) and the loop's share of
    its bare step's rate."""
    base = results[0].rate
    rows = [{"mode": r.name, "resolved to": r.settings,
             "images/s": f"{r.rate:.1f} ({min(r.rates):.1f}-{max(r.rates):.1f})"
                         + (", 1 step a round" if r.steps == 1 else ""),
             "vs first": f"{r.rate / base:.2f}x", "CPU cores busy": round(r.cpu_use, 2),
             "first 2 steps, s": round(r.first_seconds, 1),
             "loop / bare step": f"{r.rate / float(np.median(r.bare)):.1%}" if r.bare else ""} for r in results]
    return pd.DataFrame(rows)
