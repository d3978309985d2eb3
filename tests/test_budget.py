"""Training compute in epoch-equivalents, and the budget -> epochs rule of the time-to-accuracy study."""
from __future__ import annotations

import pytest

from fadenet.config import load_config
from fadenet.evaluation.time_to_accuracy import (budget_config, compute_meter, epochs_for_budget,
                                                 planned_epoch_equivalents)
from fadenet.model import build_model, count_macs
from fadenet.training.budget import UNIT_SIZE, ComputeMeter, stage_size


def test_stage_size_splits_the_epochs_into_equal_stages():
    assert [stage_size((80, 112), e, 4, 112) for e in range(4)] == [80, 80, 112, 112]
    assert [stage_size((80, 112), e, 3, 112) for e in range(3)] == [80, 80, 112]  # first stage longer
    assert [stage_size((64, 80, 96), e, 6, 112) for e in range(6)] == [64, 64, 80, 80, 96, 96]
    assert [stage_size((), e, 3, 112) for e in range(3)] == [112, 112, 112]


@pytest.fixture(scope="module")
def network():
    cfg = load_config("smoke").model
    cfg.pretrained = "none"
    return build_model(cfg)


def test_an_epoch_of_the_whole_split_at_the_unit_size_is_one(network):
    meter = ComputeMeter(network, train_faces=1000)
    assert meter.epoch_equivalents(1000, UNIT_SIZE) == pytest.approx(1.0)
    assert meter.epoch_equivalents(250, UNIT_SIZE) == pytest.approx(0.25)
    ratio = count_macs(network, 80) / count_macs(network, UNIT_SIZE)
    assert meter.epoch_equivalents(1000, 80) == pytest.approx(ratio)
    assert 0.45 < ratio < 0.6  # about (80/112)^2 = 0.51, more where small maps are padded


def test_budget_picks_the_epochs_whose_compute_is_closest():
    cfg = load_config("smoke", "data.size=112", "train.batch_size=10")
    meter = compute_meter(cfg, train_faces=100)
    assert epochs_for_budget(cfg, 4.0, meter) == 4
    half = load_config("smoke", "data.size=112", "train.batch_size=10", "train.fraction=0.5")
    assert epochs_for_budget(half, 2.0, meter) == 4
    progressive = load_config("smoke", "data.size=112", "train.batch_size=10", "train.sizes=80,112")
    epochs = epochs_for_budget(progressive, 2.0, meter)
    spent = planned_epoch_equivalents(progressive, epochs, meter)
    for other in (epochs - 1, epochs + 1):
        assert abs(planned_epoch_equivalents(progressive, other, meter) - 2.0) >= abs(spent - 2.0)
    assert budget_config(progressive, {"train.lr": 1e-3}, 2.0, 7, 100).train.epochs == epochs


def test_a_run_records_the_compute_it_spent(cfg_factory, tmp_path):
    from fadenet.training import train
    run = train(cfg_factory(f"runs_dir={tmp_path}", "train.epochs=2", "train.sizes=48,64"), progress=False)
    network = build_model(run.config.model)
    sizes = list(run.history["size"])
    assert sizes == [48, 64]
    images = run.meta["trained_on"] // 32 * 32  # whole batches of 32
    per_epoch = [images * count_macs(network, s) / (run.meta["train"] * count_macs(network, UNIT_SIZE))
                 for s in sizes]
    assert list(run.history["epoch_equivalents"]) == pytest.approx([per_epoch[0], sum(per_epoch)])
    assert run.meta["epoch_equivalents"] == pytest.approx(sum(per_epoch))


def test_chapter03_summary_names_the_best_epoch_and_the_lower_recipe_per_budget():
    import pandas as pd
    from fadenet.evaluation.time_to_accuracy import chapter_summary
    meta = {"best_val_mae": 5.0123, "best_epoch": 4, "epochs_done": 4, "epoch_equivalents": 4.0,
            "trained_on": 10656, "size": 112, "test_mae": 5.0171}
    curve = pd.DataFrame({"recipe": ["short_paper", "cpu_budget", "short_paper", "cpu_budget"],
                          "epoch_equivalents": [2.0, 2.01, 4.0, 3.98], "val_mae_mean": [5.8, 5.5, 5.4, 5.45],
                          "val_mae_std": [0.1, 0.05, 0.02, 0.03], "seeds": [2, 2, 2, 2]})
    assert chapter_summary(meta, curve).splitlines() == [
        "- The model reaches validation MAE 5.012 at epoch 4 of 4 (4.00 epoch-equivalents, 10,656 training "
        "faces at 112 px); the test MAE of those weights, without TTA, is 5.017.",
        "- About 2 epoch-equivalents: the CPU-budget recipe 5.500 ± 0.050 (2 seeds, 2.01); the paper's recipe, "
        "shortened 5.800 ± 0.100 (2 seeds, 2.00); the first is lower by 0.300.",
        "- About 4 epoch-equivalents: the paper's recipe, shortened 5.400 ± 0.020 (2 seeds, 4.00); the CPU-budget "
        "recipe 5.450 ± 0.030 (2 seeds, 3.98); the first is lower by 0.050."]
