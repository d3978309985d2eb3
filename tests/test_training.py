"""The trainer: resuming after interruptions, checkpoint safety, divergence, and learning."""
from __future__ import annotations

import json
import random
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fadenet.config import ModelConfig
from fadenet.data import load_split, prepare
from fadenet.model import build_model
from fadenet.training import (CheckpointError, TrainingDiverged, load_checkpoint_file, load_model,
                              load_weights, train)
from fadenet.runtime import usable_cores
from fadenet.training.bench import modes_frame, training_modes
from fadenet.resolve import resolve
from fadenet.training.recipe import ema_update, lr_at
from fadenet.training.trainer import Trainer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _history(run) -> pd.DataFrame:
    return run.history[["epoch", "train_loss", "val_loss", "val_mae", "lr"]]


# ---- resume -------------------------------------------------------------------------------

def test_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(cfg_factory, tmp_path, monkeypatch):
    whole = train(cfg_factory("train.epochs=3", f"runs_dir={tmp_path / 'a'}"), progress=False)

    cfg = cfg_factory("train.epochs=3", f"runs_dir={tmp_path / 'b'}")
    real_step = Trainer._step

    def step_then_die(self, x, ages, gen, rng, epoch, b):
        if epoch == 1 and b == 2:
            raise KeyboardInterrupt  # stands for a kill in the middle of epoch 2
        return real_step(self, x, ages, gen, rng, epoch, b)

    monkeypatch.setattr(Trainer, "_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    folder = resolve(cfg).run_folder
    assert json.loads((folder / "meta.json").read_text())["status"] == "running"
    assert load_checkpoint_file(folder / "last.pt")["epoch"] == 1
    assert pd.read_csv(folder / "batches.csv")["epoch"].max() == 0  # only epoch 1's batches logged

    monkeypatch.setattr(Trainer, "_step", real_step)
    resumed = train(cfg, progress=False)
    assert resumed.meta["status"] == "finished" and resumed.meta["epochs_done"] == 3
    pd.testing.assert_frame_equal(_history(resumed), _history(whole), rtol=1e-4)
    assert resumed.meta["test_mae"] == pytest.approx(whole.meta["test_mae"], abs=1e-4)
    pd.testing.assert_frame_equal(pd.read_csv(folder / "batches.csv"),
                                  pd.read_csv(whole.folder / "batches.csv"), rtol=1e-4)


def test_killed_process_resumes_from_its_last_checkpoint(cfg_factory, tmp_path):
    overrides = ["train.epochs=4", f"runs_dir={tmp_path / 'killed'}"]
    cfg = cfg_factory(*overrides)
    prepare(cfg, progress=False)  # the child then starts training at once
    args = [sys.executable, "-m", "fadenet", "train", "--profile", "smoke",
            f"data.root={cfg.data.root}", f"data.cache_dir={cfg.data.cache_dir}", "train.threads=1", *overrides]
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    last = resolve(cfg).run_folder / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before_kill = load_checkpoint_file(last)["epoch"]
    assert 1 <= done_before_kill < 4

    resumed = train(cfg, progress=False)
    whole = train(cfg_factory("train.epochs=4", f"runs_dir={tmp_path / 'whole'}"), progress=False)
    pd.testing.assert_frame_equal(_history(resumed), _history(whole), rtol=1e-4)
    assert resumed.meta["test_mae"] == pytest.approx(whole.meta["test_mae"], abs=1e-4)


def test_a_finished_run_is_reused_not_trained_again(cfg_factory, tmp_path, monkeypatch):
    cfg = cfg_factory(f"runs_dir={tmp_path}")
    first = train(cfg, progress=False)
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("a finished run was trained again"))
    again = train(cfg, progress=False)
    assert again.folder == first.folder and again.meta == first.meta


# ---- what a run writes --------------------------------------------------------------------

def test_each_run_logs_to_its_own_file_only(cfg_factory, tmp_path):
    first = train(cfg_factory("train.epochs=1", f"runs_dir={tmp_path}"), progress=False)
    second = train(cfg_factory("train.epochs=2", f"runs_dir={tmp_path}"), progress=False)
    assert first.folder != second.folder
    first_log, second_log = (r.folder.joinpath("train.log").read_text() for r in (first, second))
    assert first_log.count("epoch 1/1") == 1 and "epoch 1/2" not in first_log and "epoch 2/2" not in first_log
    assert second_log.count("epoch 1/2") == 1 and second_log.count("epoch 2/2") == 1 and "epoch 1/1" not in second_log


def test_a_run_writes_config_logs_events_and_checkpoints(cfg_factory, tmp_path):
    run = train(cfg_factory("train.epochs=2", f"runs_dir={tmp_path}"), progress=False)
    names = {p.name for p in run.folder.iterdir()}
    assert {"config.yaml", "meta.json", "log.csv", "batches.csv", "train.log", "last.pt", "best.pt", "tb"} <= names
    assert any(run.folder.joinpath("tb").iterdir()), "no TensorBoard events"
    assert not [n for n in names if n.endswith(".tmp")], "temporary files left behind"
    assert list(run.history["epoch"]) == [1, 2]
    best = load_checkpoint_file(run.best)
    assert best["epoch"] == run.meta["best_epoch"]
    assert best["val_mae"] == pytest.approx(run.history["val_mae"].min())
    # the checkpoint holds plain data only: it loads with weights_only=True
    assert isinstance(torch.load(run.best, weights_only=True)["config"], dict)


def test_learning_rate_warms_up_then_decays_by_cosine_to_the_floor():
    lrs = [lr_at(s, total=100, warmup=10, lr=1.0, min_ratio=0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, 100, 10, 1.0, 0.01) == pytest.approx(0.01)
    assert lr_at(55, 100, 10, 1.0, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)


def test_linear_schedule_falls_in_a_straight_line_to_the_floor():
    # warm-up to step 10, then 1.0 at step 10 down to 0.1 at step 100: 0.01 a step
    assert lr_at(10, 100, 10, 1.0, 0.1, "linear") == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.1, "linear") == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(91, 100, 10, 1.0, 0.0, "linear") == pytest.approx(0.1)
    assert lr_at(100, 100, 10, 1.0, 0.0, "linear") == 0.0
    assert lr_at(3, 100, 10, 1.0, 0.0, "linear") == lr_at(3, 100, 10, 1.0, 0.0, "cosine") == pytest.approx(0.4)


def _averaged(decay: float, warmup: bool, steps: int) -> float:
    """The EMA of a weight that is 1.0 at every step after starting at 0."""
    average, current = [torch.zeros(1)], [torch.ones(1)]
    update = ema_update(decay, warmup)
    for n in range(1, steps + 1):  # AveragedModel passes the count of averages made so far
        update(average, current, torch.tensor(n))
    return float(average[0])


def test_weight_average_warm_up_sets_the_decay_of_short_runs():
    # with the warm-up, step n keeps (1+n)/(10+n) of the average: the product over n=1..N is
    # prod (1+n)/(10+n) = (N+1)...(2) / (N+10)...(11); the cap only bites once the warm-up passes it
    expected = 1 - math.prod((1 + n) / (10 + n) for n in range(1, 301))
    assert _averaged(0.995, True, 300) == pytest.approx(expected, rel=1e-5)
    assert _averaged(0.99, True, 300) == _averaged(0.995, True, 300)  # same run below 890 steps
    assert _averaged(0.99, False, 300) == pytest.approx(1 - 0.99 ** 300, rel=1e-5)


def _rates(trainer: Trainer) -> tuple[set[float], set[float]]:
    """The learning rates last applied to the ImageNet layers and to the new layers."""
    pretrained = {id(p) for p in trainer.model.pretrained_parameters()}
    old, new = set(), set()
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            (old if id(p) in pretrained else new).add(group["lr"])
    return old, new


def _trainer(cfg) -> Trainer:
    faces = prepare(cfg, progress=False)
    return Trainer.build(resolve(cfg), faces, load_split(faces, cfg), progress=False)


def test_imagenet_layers_learn_at_their_share_of_the_rate(cfg_factory, mbv2_torch_home, tmp_path):
    cfg = cfg_factory(f"runs_dir={tmp_path}", "model.backbone=mobilenet_v2", "model.pretrained=imagenet",
                      "train.freeze_epochs=0", "train.lr=2e-3", "train.backbone_lr_scale=0.25")
    trainer = _trainer(cfg)
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(list(trainer.model.parameters()))
    trainer.fit()
    (old,), (new,) = _rates(trainer)
    assert new == pytest.approx(lr_at(trainer.total_steps - 1, trainer.total_steps, trainer.warmup_steps,
                                      2e-3, cfg.train.min_lr_ratio))
    assert old == pytest.approx(0.25 * new)


def test_a_network_from_random_weights_learns_at_one_rate(cfg_factory, tmp_path):
    trainer = _trainer(cfg_factory(f"runs_dir={tmp_path}", "train.backbone_lr_scale=0.25"))  # smoke: random weights
    trainer.fit()
    old, new = _rates(trainer)
    assert not old and len(new) == 1


def test_training_benchmark_times_each_mode_in_rounds_and_leaves_no_run(cfg_factory, tmp_path):
    cfg = cfg_factory(f"runs_dir={tmp_path}", "data.synthetic_count=400", "train.batch_size=32", "data.size=32")
    faces = prepare(cfg, progress=False)
    modes = ["eager FP32, NCHW", "channels-last, plain AdamW", "channels-last, one process per core"]
    results = training_modes(cfg, faces, load_split(faces, cfg), modes, steps=2, rounds=3)
    assert [r.name for r in results] == modes
    nchw, channels_last, per_core = results
    assert nchw.settings.startswith("NCHW, fp32, AdamW, eager, 1 x")
    assert channels_last.settings.startswith("channels-last, fp32, AdamW, eager, 1 x")
    n = max(k for k in range(1, usable_cores() + 1) if 32 % k == 0)  # one process per core that 32 divides among
    assert per_core.settings.endswith(f", {n} x 1 threads")
    assert all(len(r.rates) == 3 for r in results)
    assert len(channels_last.bare) == 3 and not nchw.bare  # bare steps for the modes in BARE only
    table = modes_frame(results)
    assert list(table["mode"]) == modes and table["vs first"].iloc[0] == "1.00x"
    ratio = channels_last.rate / nchw.rate
    assert table["vs first"].iloc[1] == f"{ratio:.2f}x"
    assert table["loop / bare step"].iloc[1] == f"{channels_last.rate / np.median(channels_last.bare):.1%}"
    assert table["loop / bare step"].iloc[0] == ""
    assert not (tmp_path / "bench-train").exists()  # a benchmark leaves no run behind


def test_benchmark_modes_follow_the_device(cfg_factory, monkeypatch):
    from fadenet.training import bench
    cfg = cfg_factory()
    assert bench.device_modes(cfg) == list(bench.MODES)
    assert bench.device_modes(cfg, ["compile", "(auto)"]) == ["channels-last, torch.compile",
                                                                "the trainer's default (auto)"]
    monkeypatch.setattr(bench, "pick_device", lambda _: torch.device("cuda"))
    assert bench.device_modes(cfg) == [m for m in bench.MODES if m != "channels-last, one process per core"]


# ---- bad checkpoints ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_checkpoint(tmp_path_factory) -> Path:
    from fadenet.config import load_config
    base = tmp_path_factory.mktemp("ckpt")
    (base / "empty").mkdir()
    cfg = load_config("smoke", f"data.root={base / 'empty'}", f"data.cache_dir={base / 'cache'}",
                      f"runs_dir={base / 'runs'}")
    return train(cfg, progress=False).best


@pytest.mark.parametrize("change,words", [
    ({"arch": "baseline"}, "holds a fadenet network on mobilenet_v3_large with 81 age classes, not the baseline"),
    ({"backbone": "mobilenet_v2"}, "not the fadenet network on mobilenet_v2"),
    ({"num_classes": 50}, "with 50 age classes"),
])
def test_a_checkpoint_of_another_network_is_one_clear_error(smoke_checkpoint, change, words):
    model = build_model(ModelConfig(pretrained="none", **change))
    with pytest.raises(CheckpointError) as err:
        load_weights(model, smoke_checkpoint)
    assert str(smoke_checkpoint) in str(err.value) and words in str(err.value)


def test_a_checkpoint_that_differs_only_in_its_layers_is_one_clear_error(smoke_checkpoint):
    model = build_model(ModelConfig(pretrained="none", spp=False))
    with pytest.raises(CheckpointError, match="does not fit this fadenet network"):
        load_weights(model, smoke_checkpoint)


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(random.Random(7).randbytes(2000))
    other = tmp_path / "state_dict.pt"
    torch.save(build_model(ModelConfig(pretrained="none", arch="baseline", backbone="resnet18")).state_dict(), other)
    for path, words in ((tmp_path / "missing.pt", "does not exist"), (garbage, "not a readable"),
                        (other, "not a FADE-Net checkpoint")):
        with pytest.raises(CheckpointError, match=words) as err:
            load_model(path)
        assert str(path) in str(err.value)


def _damaged_copies(data: bytes, rng: random.Random):
    """Random files, cuts of a real checkpoint at many lengths, and copies with a few bits flipped."""
    for _ in range(30):
        yield "random bytes", rng.randbytes(rng.randrange(1, 5000))
    for n in [1, 2, 22, 100, 1000] + sorted(rng.sample(range(1000, len(data)), 25)) + [len(data) - 1]:
        yield f"cut at {n} bytes", data[:n]
    for _ in range(30):
        copy = bytearray(data)
        for _ in range(rng.randrange(1, 9)):
            pos = rng.randrange(len(copy))
            copy[pos] ^= 1 << rng.randrange(8)
        yield "bits flipped", bytes(copy)


def test_a_damaged_checkpoint_always_gives_the_clear_error(smoke_checkpoint, tmp_path):
    path = tmp_path / "damaged.pt"
    for what, data in _damaged_copies(smoke_checkpoint.read_bytes(), random.Random(2026)):
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        assert str(path) in str(err.value), what


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "fadenet-checkpoint-1", "payload": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="not a readable FADE-Net checkpoint"):
        load_model(evil)
    assert not (tmp_path / "pwned").exists()


# ---- divergence ---------------------------------------------------------------------------

def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(cfg_factory, tmp_path, monkeypatch):
    cfg = cfg_factory("train.epochs=3", f"runs_dir={tmp_path}")
    real_step = Trainer._step

    def poisoned_batch_in_epoch_two(self, x, ages, gen, rng, epoch, b):
        if epoch == 1 and b == 1:
            x = x * float("nan")  # e.g. a corrupt batch: NaN logits, NaN loss
        return real_step(self, x, ages, gen, rng, epoch, b)

    monkeypatch.setattr(Trainer, "_step", poisoned_batch_in_epoch_two)
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, progress=False)
    folder = resolve(cfg).run_folder
    message = str(err.value)
    assert "nan" in message and "epoch 2, batch 2" in message and str(folder / "last.pt") in message
    last = load_checkpoint_file(folder / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["status"] == "diverged" and "nan" in meta["error"]


def test_diverged_run_is_one_line_on_the_command_line(cfg_factory, tmp_path):
    cfg = cfg_factory(f"runs_dir={tmp_path}", "train.lr=1e30", "train.grad_clip=0", "train.epochs=2")
    prepare(cfg, progress=False)
    result = subprocess.run([sys.executable, "-m", "fadenet", "train", "--profile", "smoke",
                             f"data.root={cfg.data.root}", f"data.cache_dir={cfg.data.cache_dir}",
                             f"runs_dir={tmp_path}", "train.lr=1e30", "train.grad_clip=0", "train.epochs=2",
                             "train.threads=1"], capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert lines[-1].startswith("error: the loss became") and "training stopped" in lines[-1]


# ---- learning on real faces ---------------------------------------------------------------

@pytest.mark.aaf
def test_training_lowers_the_error_on_real_faces(cfg_factory, aaf_root, mbv2_torch_home, tmp_path):
    # 1,200 real faces (960 to train on, 120 to test), ImageNet MobileNetV2, a few seconds an epoch
    cfg = cfg_factory(f"runs_dir={tmp_path}", "data.subset=1200", "data.size=64", "model.backbone=mobilenet_v2",
                      "model.pretrained=imagenet", "train.epochs=3", "train.freeze_epochs=1", "train.lr=1e-3",
                      "train.batch_size=32", "train.warmup_epochs=0.3", "train.mixup_prob=0",
                      root=aaf_root)
    faces = prepare(cfg, progress=False)
    split = load_split(faces, cfg)
    trainer = Trainer.build(resolve(cfg), faces, split, progress=False)
    before = trainer.validate(split.test)[1]
    run = trainer.fit()
    after = run.meta["test_mae"]
    test_ages = faces.ages[split.test]
    median_predictor = float(np.abs(test_ages - np.median(faces.ages[split.train])).mean())
    assert after < before - 2.0, (before, after)
    assert after < median_predictor, (after, median_predictor)
    assert math.isfinite(run.history["val_mae"].iloc[-1])


# ---- the paper profile ------------------------------------------------------------------------

def test_the_paper_profile_without_afad_is_one_clear_error(tmp_path):
    from fadenet.config import load_config
    from fadenet.data.sources import DatasetError
    cfg = load_config("paper", f"data.root={tmp_path}", f"data.cache_dir={tmp_path}/cache", f"runs_dir={tmp_path}/runs")
    with pytest.raises(DatasetError, match=f"afad dataset not found: {tmp_path / 'AFAD-Full'} does not exist"):
        train(cfg, progress=False)


def test_the_paper_profile_trains_end_to_end_on_an_afad_layout_folder(tmp_path, image_writer):
    from fadenet.config import load_config
    base = tmp_path / "AFAD-Full"
    for i in range(50):
        image_writer(base / f"{15 + i % 40}/{'111' if i % 2 else '112'}/{i}.jpg", (5 * i, 100, 250 - 4 * i), size=40)
    cfg = load_config("paper", f"data.root={tmp_path}", f"data.cache_dir={tmp_path}/cache", f"runs_dir={tmp_path}/runs",
                      "data.size=32", "train.epochs=1", "train.batch_size=16", "model.pretrained=none")
    run = train(cfg, progress=False)
    assert run.meta["status"] == "finished" and run.meta["source"] == "afad" and run.meta["trained_on"] == 40
    assert len(pd.read_csv(run.folder / "batches.csv")) == 2  # 40 training faces, batches of 16, the last partial dropped
    assert math.isfinite(run.meta["test_mae"])


def test_a_resumed_run_drops_the_batch_rows_of_the_epoch_it_repeats_and_other_ranks_write_nothing(tmp_path):
    from fadenet.training.run import RunFolder
    folder = RunFolder(tmp_path / "run")
    (tmp_path / "run").mkdir()
    folder.append_batches([(e, b, 2 * e + b, 1.0 / (1 + e), 0.1) for e in range(3) for b in range(2)])
    folder.keep_batches_before(2)  # killed in epoch 3, after its rows were written, before its checkpoint
    assert pd.read_csv(tmp_path / "run" / "batches.csv")["step"].tolist() == [0, 1, 2, 3]
    folder.keep_batches_before(0)  # no checkpoint at all: the run starts over
    assert not (tmp_path / "run" / "batches.csv").exists()
    other = RunFolder(tmp_path / "other", main=False)
    other.append_batches([(0, 0, 0, 1.0, 0.1)])
    other.write_meta({"status": "running"})
    assert not (tmp_path / "other").exists()
