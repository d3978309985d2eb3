"""Fast training modes: data-parallel processes (gloo on CPU), bf16 autocast, torch.compile.

The data-parallel tests train a tiny network without BatchNorm or dropout, so that N processes
that each see 1/N of every batch must compute exactly what one process computes from the whole
batch (up to the order of floating-point sums); with BatchNorm each process would normalise its
share on its own, which is expected to differ.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import fadenet.resolve as resolve_module
import fadenet.runtime as runtime
import fadenet.training.trainer as trainer_module
from fadenet.config import ConfigError
from fadenet.data import load_split, prepare
from fadenet.evaluation.evaluate import evaluate
from fadenet.explore import AgePredictor
from fadenet.model import AgeNet
from fadenet.training import load_checkpoint_file, load_model, train
from fadenet.training import parallel
from fadenet.resolve import resolve
from fadenet.training.trainer import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SAME = dict(rtol=1e-4, atol=1e-6)  # one process against several: only the order of sums differs


class TinyNet(nn.Module):
    """Conv, ReLU, average pool, linear: no BatchNorm, no dropout."""

    def __init__(self, num_classes: int = 81):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(8, num_classes))
        self.meta = {"arch": "fadenet", "backbone": "mobilenet_v3_large", "pretrained": "random", "init_warning": ""}

    def forward(self, x):
        return self.head(self.features(x))

    def pretrained_parameters(self):
        return []

    optimizer_groups = AgeNet.optimizer_groups  # the groups as the trainer asks any network for them


def _tiny(monkeypatch_or_none=None):
    if monkeypatch_or_none is None:
        resolve_module.build_model = lambda cfg, weights=False: TinyNet(cfg.num_classes)
    else:
        monkeypatch_or_none.setattr(resolve_module, "build_model", lambda cfg, weights=False: TinyNet(cfg.num_classes))


def _deterministic_cfg(cfg_factory, tmp_path: Path, name: str, *extra: str):
    """Every random draw that depends on the process off: no augmentation, mixup, label jitter
    or LDS (whose weighted mean each process would take over its own share)."""
    cfg = resolve(cfg_factory(f"runs_dir={tmp_path / name}", "train.augment=false", "train.mixup_prob=0",
                               "loss.sigma_jitter=0", "loss.lds=false", "train.epochs=2", "data.size=32",
                               "train.ema_decay=0.9", *extra)).config
    prepare(cfg, progress=False)  # once, before the processes that read it start
    return cfg


def _fit_in_group(cfg, die_at: tuple[int, int] | None = None) -> None:
    """Worker: train ``cfg`` as one of the spawned processes, optionally dying at (epoch, batch)."""
    _tiny()
    if die_at is not None:
        real_step = Trainer._step

        def step_then_die(self, x, ages, gen, rng, epoch, b):
            if (epoch, b) == die_at:
                raise RuntimeError("killed")  # stands for a kill in the middle of an epoch
            return real_step(self, x, ages, gen, rng, epoch, b)

        Trainer._step = step_then_die
    torch.set_num_threads(1)
    faces = prepare(cfg, progress=False)
    Trainer.build(resolve(cfg), faces, load_split(faces, cfg), False, parallel.current_group()).fit()


def _fit_alone(cfg, monkeypatch):
    _tiny(monkeypatch)
    faces = prepare(cfg, progress=False)
    return Trainer.build(resolve(cfg), faces, load_split(faces, cfg), False).fit()


def _weights(path: Path) -> dict:
    return load_checkpoint_file(path)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], **SAME, msg=f"{k} differs")


# ---- data parallelism -------------------------------------------------------------------------

def test_two_processes_learn_exactly_what_one_learns_from_the_same_batches(cfg_factory, tmp_path, monkeypatch):
    one = _deterministic_cfg(cfg_factory, tmp_path, "one")
    two = _deterministic_cfg(cfg_factory, tmp_path, "two")
    alone = _fit_alone(one, monkeypatch)
    parallel.spawn(_fit_in_group, 2, two)
    pair = trainer_module.load_run(resolve(two).run_folder)
    assert pair.meta["processes"] == 2 and alone.meta["processes"] == 1
    _assert_same_weights(resolve(one).run_folder / "last.pt", resolve(two).run_folder / "last.pt")
    _assert_same_weights(alone.best, pair.best)
    cols = ["train_loss", "train_mae", "val_loss", "val_mae"]
    pd.testing.assert_frame_equal(pair.history[cols], alone.history[cols], rtol=1e-4)
    assert pair.meta["test_mae"] == pytest.approx(alone.meta["test_mae"], rel=1e-4)
    # one process wrote the folder: the batch log holds each step once
    assert len(pd.read_csv(pair.folder / "batches.csv")) == len(pd.read_csv(alone.folder / "batches.csv"))


def test_each_process_sees_a_disjoint_share_of_every_batch(cfg_factory):
    cfg = cfg_factory("data.synthetic_count=100")
    faces = prepare(cfg, progress=False)
    rows = np.arange(len(faces))
    from fadenet.data.loader import Batches
    whole = [set(r.tolist()) for _, _, r in Batches(faces.images, faces.ages, rows, 8, train=True, seed=3)]
    shares = [[set(r.tolist()) for _, _, r in Batches(faces.images, faces.ages, rows, 8, train=True, seed=3,
                                                        shard=(rank, 2))] for rank in (0, 1)]
    for batch, a, b in zip(whole, *shares):
        assert len(a) == len(b) == 4 and not a & b and a | b == batch


def test_a_killed_two_process_run_resumes_and_ends_like_an_uninterrupted_one(cfg_factory, tmp_path):
    whole = _deterministic_cfg(cfg_factory, tmp_path, "whole", "train.epochs=3")
    cut = _deterministic_cfg(cfg_factory, tmp_path, "cut", "train.epochs=3")
    parallel.spawn(_fit_in_group, 2, whole)
    with pytest.raises(RuntimeError, match="a training process failed"):
        parallel.spawn(_fit_in_group, 2, cut, (1, 2))
    assert load_checkpoint_file(resolve(cut).run_folder / "last.pt")["epoch"] == 1
    parallel.spawn(_fit_in_group, 2, cut)
    _assert_same_weights(resolve(whole).run_folder / "last.pt", resolve(cut).run_folder / "last.pt")
    a, b = trainer_module.load_run(resolve(whole).run_folder), trainer_module.load_run(resolve(cut).run_folder)
    pd.testing.assert_frame_equal(a.history[["train_loss", "val_mae"]], b.history[["train_loss", "val_mae"]],
                                  rtol=1e-4)


def test_a_checkpoint_of_one_process_resumes_in_two(cfg_factory, tmp_path, monkeypatch):
    whole = _deterministic_cfg(cfg_factory, tmp_path, "whole", "train.epochs=3")
    cut = _deterministic_cfg(cfg_factory, tmp_path, "cut", "train.epochs=3")
    _fit_alone(whole, monkeypatch)
    real_step = Trainer._step

    def step_then_die(self, x, ages, gen, rng, epoch, b):
        if (epoch, b) == (1, 2):
            raise KeyboardInterrupt
        return real_step(self, x, ages, gen, rng, epoch, b)
    monkeypatch.setattr(Trainer, "_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        _fit_alone(cut, monkeypatch)
    monkeypatch.setattr(Trainer, "_step", real_step)
    parallel.spawn(_fit_in_group, 2, cut)  # epochs 2 and 3 in two processes
    _assert_same_weights(resolve(whole).run_folder / "last.pt", resolve(cut).run_folder / "last.pt")


def test_a_checkpoint_of_two_processes_resumes_in_one(cfg_factory, tmp_path, monkeypatch):
    whole = _deterministic_cfg(cfg_factory, tmp_path, "whole", "train.epochs=3")
    cut = _deterministic_cfg(cfg_factory, tmp_path, "cut", "train.epochs=3")
    _fit_alone(whole, monkeypatch)
    with pytest.raises(RuntimeError):
        parallel.spawn(_fit_in_group, 2, cut, (1, 2))
    _fit_alone(cut, monkeypatch)  # epochs 2 and 3 in one process
    _assert_same_weights(resolve(whole).run_folder / "last.pt", resolve(cut).run_folder / "last.pt")


def test_train_spawns_its_processes_and_the_checkpoint_serves_one_process(cfg_factory, tmp_path):
    # the real smoke network, through train(): 2 processes of 1 thread
    cfg = cfg_factory(f"runs_dir={tmp_path}", "train.processes=2", "train.threads=1", "train.epochs=1")
    run = train(cfg, progress=False)
    assert run.meta["status"] == "finished" and run.meta["processes"] == 2
    model, _, _ = load_model(run.best)
    result = evaluate([run.best], tta="none", progress=False)
    assert result.summary()["MAE"] == pytest.approx(run.meta["test_mae"], abs=1e-4)
    faces = prepare(cfg, progress=False)
    assert len(result.table) == len(load_split(faces, cfg).test)
    assert isinstance(model, nn.Module)


def test_a_batch_that_does_not_divide_among_the_processes_is_one_clear_error(cfg_factory, tmp_path):
    cfg = cfg_factory(f"runs_dir={tmp_path}", "train.processes=3", "train.batch_size=32")
    with pytest.raises(ConfigError, match="train.batch_size=32 must divide evenly among train.processes=3"):
        train(cfg, progress=False)


def test_auto_is_one_process_and_the_threads_share_the_cores(cfg_factory, monkeypatch):
    monkeypatch.setattr(parallel, "usable_cores", lambda: 8)
    assert parallel.process_count(cfg_factory("train.processes=0")) == 1
    assert parallel.process_count(cfg_factory("train.processes=4", "train.batch_size=32")) == 4
    assert parallel.threads_per_process(cfg_factory("train.threads=0"), 2) == 4
    assert parallel.threads_per_process(cfg_factory("train.threads=3"), 2) == 3


# ---- precision and compilation ----------------------------------------------------------------

def _one_step(cfg, monkeypatch) -> tuple[float, dict]:
    """(loss, parameter change) of the first training step of ``cfg`` on the tiny network."""
    _tiny(monkeypatch)
    faces = prepare(cfg, progress=False)
    trainer = Trainer.build(resolve(cfg), faces, load_split(faces, cfg), False)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    x, ages, _ = next(iter(trainer.batches))
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-3
    loss, _ = trainer._step(trainer._input(x), ages, torch.Generator().manual_seed(0),
                            np.random.default_rng(0), 0, 0)
    return loss, {k: v.detach() - before[k] for k, v in trainer.model.named_parameters()}


def _cosine(a: dict, b: dict) -> float:
    va = torch.cat([t.flatten() for t in a.values()])
    vb = torch.cat([t.flatten() for t in b.values()])
    return float(va @ vb / (va.norm() * vb.norm()))


def test_a_bf16_step_changes_the_weights_as_fp32_does(cfg_factory, tmp_path, monkeypatch):
    base = ("train.augment=false", "data.size=32", "train.fused_adamw=false")
    loss32, step32 = _one_step(cfg_factory(f"runs_dir={tmp_path}", "train.precision=fp32", *base), monkeypatch)
    loss16, step16 = _one_step(cfg_factory(f"runs_dir={tmp_path}", "train.precision=bf16", *base), monkeypatch)
    assert np.isfinite(loss16)
    assert loss16 == pytest.approx(loss32, rel=0.02)  # bf16 keeps 8 bits of mantissa: ~0.4% per product
    assert _cosine(step16, step32) > 0.95


def test_the_fused_optimiser_makes_the_same_step(cfg_factory, tmp_path, monkeypatch):
    base = ("train.augment=false", "data.size=32", "train.precision=fp32")
    _, plain = _one_step(cfg_factory(f"runs_dir={tmp_path}", "train.fused_adamw=false", *base), monkeypatch)
    _, fused = _one_step(cfg_factory(f"runs_dir={tmp_path}", "train.fused_adamw=true", *base), monkeypatch)
    for k in plain:
        torch.testing.assert_close(fused[k], plain[k], rtol=1e-5, atol=1e-8)


def test_a_compiled_step_changes_the_weights_as_the_eager_one(cfg_factory, tmp_path, monkeypatch):
    base = ("train.augment=false", "data.size=32", "train.precision=fp32")
    loss_e, eager = _one_step(cfg_factory(f"runs_dir={tmp_path}", "train.compile=false", *base), monkeypatch)
    loss_c, compiled = _one_step(cfg_factory(f"runs_dir={tmp_path}", "train.compile=true", *base), monkeypatch)
    assert loss_c == pytest.approx(loss_e, rel=1e-5)
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-4, atol=1e-7)


def test_a_failing_compiler_falls_back_to_the_eager_step_with_one_warning(cfg_factory, tmp_path, monkeypatch,
                                                                           caplog):
    base = ("train.augment=false", "data.size=32", "train.precision=fp32")
    loss_e, eager = _one_step(cfg_factory(f"runs_dir={tmp_path}", "train.compile=false", *base), monkeypatch)

    class Broken:
        def __init__(self, module):
            pass

        def __call__(self, x):
            raise RuntimeError("backend compiler failed: no C++ compiler found")

    monkeypatch.setattr(torch, "compile", Broken)
    with caplog.at_level(logging.WARNING, logger="fadenet.runtime"):
        loss_b, broken = _one_step(cfg_factory(f"runs_dir={tmp_path}", "train.compile=true", *base), monkeypatch)
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler found" in warnings[0].getMessage()
    assert loss_b == pytest.approx(loss_e, rel=1e-6)
    for k in eager:
        torch.testing.assert_close(broken[k], eager[k])


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_matrix_units(cfg_factory, monkeypatch):
    monkeypatch.setattr(runtime, "fast_bf16", lambda: False)
    assert resolve(cfg_factory("train.precision=auto", "train.device=cpu")).precision == "fp32"
    monkeypatch.setattr(runtime, "fast_bf16", lambda: True)
    assert resolve(cfg_factory("train.precision=auto", "train.device=cpu")).precision == "bf16"
    # precision is part of a run's identity; compile and processes are not
    ids = {resolve(cfg_factory(f"train.precision={p}")).config.run_id() for p in ("fp32", "bf16")}
    assert len(ids) == 2
    same = {cfg_factory(*o).run_id() for o in (("train.compile=true",), ("train.processes=2",), ())}
    assert len(same) == 1


def test_fp16_on_a_cpu_is_one_clear_error(cfg_factory, tmp_path):
    cfg = cfg_factory(f"runs_dir={tmp_path}", "train.precision=fp16", "train.device=cpu")
    with pytest.raises(ConfigError, match="train.precision=fp16 needs a CUDA device"):
        train(cfg, progress=False)


def test_sync_batchnorm_on_cpu_processes_is_one_clear_error(cfg_factory, tmp_path):
    cfg = cfg_factory(f"runs_dir={tmp_path}", "train.sync_bn=true", "train.device=cpu")
    faces = prepare(cfg, progress=False)
    with pytest.raises(ConfigError, match="train.sync_bn=true needs CUDA devices"):
        Trainer.build(resolve(cfg), faces, load_split(faces, cfg), progress=False, group=parallel.Group(0, 2), folder=tmp_path / "run")


def test_torchrun_trains_with_two_processes_and_prints_once(cfg_factory, tmp_path):
    cfg = cfg_factory(f"runs_dir={tmp_path}", "train.epochs=1", "data.size=32")
    prepare(cfg, progress=False)
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run([str(torchrun), "--nproc_per_node=2", "-m", "fadenet", "train", "--profile", "smoke",
                             f"data.root={cfg.data.root}", f"data.cache_dir={cfg.data.cache_dir}",
                             f"runs_dir={tmp_path}", "train.epochs=1", "data.size=32"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("best val MAE") == 1
    run = trainer_module.load_run(resolve(cfg).run_folder)
    assert run.meta["status"] == "finished" and run.meta["processes"] == 2
    predictor = AgePredictor.from_checkpoint(run.best)  # a checkpoint of two processes serves one
    faces = prepare(cfg, progress=False)
    test = load_split(faces, cfg).test
    probs = predictor.predict_crops(faces.images[test])
    ages = probs @ np.arange(probs.shape[1])
    assert np.abs(ages - faces.ages[test]).mean() == pytest.approx(run.meta["test_mae"], abs=1e-3)


def test_prediction_in_bf16_is_close_to_fp32_and_really_in_bf16():
    from fadenet.model import predict_probs
    model = TinyNet().eval()
    with torch.no_grad():
        model.head[0].weight.mul_(20)   # a peaked distribution, so that rounding shows
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    fp32 = predict_probs(model, images, np.arange(4))
    bf16 = predict_probs(model, images, np.arange(4), precision="bf16")
    ages = np.arange(81)
    assert not np.array_equal(fp32, bf16)                             # autocast was on
    assert np.abs(fp32 @ ages - bf16 @ ages).max() < 0.5              # expected ages within half a year
