"""The trainer's use of the DLDL-v2 loss: one real training step, with spies on the label widths
and on the loss, against the loss written out from the configuration.

The loss functions have unit tests of their own (test_loss.py); these tests catch a trainer that
calls them wrongly: without the adaptive, jittered sigma, without the LDS weights, or with
weights other than the configured ones.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fadenet.training.trainer as trainer_module
from fadenet.data import load_split, prepare
from fadenet.training.loss import DLDLLoss, label_sigma, lds_weights, target_distribution
from fadenet.resolve import resolve
from fadenet.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")
K = 81


def _step_with_spies(cfg, monkeypatch) -> dict:
    """One training step of ``cfg``; what label_sigma returned, what the loss received, and the
    loss the step reported."""
    seen: dict = {"sigma": []}
    real_sigma, real_forward = trainer_module.label_sigma, DLDLLoss.forward

    def sigma_spy(ages, loss_cfg, k, jitter, generator=None):
        out = real_sigma(ages, loss_cfg, k, jitter, generator)
        seen["sigma"].append((jitter, out.clone()))
        return out

    def forward_spy(self, logits, target, ages, sample_weights=None):
        seen["logits"], seen["target"], seen["ages"] = logits.detach().clone(), target.clone(), ages.clone()
        seen["weights"] = None if sample_weights is None else sample_weights.clone()
        return real_forward(self, logits, target, ages, sample_weights)

    monkeypatch.setattr(trainer_module, "label_sigma", sigma_spy)
    monkeypatch.setattr(DLDLLoss, "forward", forward_spy)
    faces = prepare(cfg, progress=False)
    split = load_split(faces, cfg)
    trainer = Trainer.build(resolve(cfg), faces, split, False)
    x, ages, _ = next(iter(trainer.batches))
    seen["loss"], _ = trainer._step(trainer._input(x), ages, torch.Generator().manual_seed(5),
                                    np.random.default_rng(5), 0, 0)
    seen["train_ages"] = torch.as_tensor(faces.ages[trainer.parts.train_rows])
    return seen


def _reference_loss(seen: dict, cfg, weights: torch.Tensor) -> float:
    """KL + l1_weight * L1 + rank_weight * ranking BCE, written out (mv_weight is 0)."""
    logits, target, ages = seen["logits"].float(), seen["target"], seen["ages"]
    p = torch.softmax(logits, 1)
    kl = (torch.xlogy(target, target) - target * torch.log(p)).sum(1)
    mean_age = p @ torch.arange(K, dtype=torch.float32)
    l1 = (mean_age - ages).abs()
    total = (weights * kl).mean() + cfg.loss.l1_weight * (weights * l1).mean()
    if cfg.loss.dldl_v2:
        pc = p.cumsum(1)[:, :-1].clamp(1e-6, 1 - 1e-6)
        tc = target.cumsum(1)[:, :-1]
        total = total + cfg.loss.rank_weight * -(tc * pc.log() + (1 - tc) * (1 - pc).log()).mean()
    return float(total)


def _cfg(cfg_factory, tmp_path, *extra):
    return cfg_factory(f"runs_dir={tmp_path}", "data.size=32", "train.mixup_prob=0", "loss.l1_weight=0.25",
                       "loss.rank_weight=0.7", "loss.sigma_jitter=0.3", *extra)


def test_the_step_uses_the_adaptive_jittered_sigma_and_the_configured_weights(cfg_factory, tmp_path, monkeypatch):
    cfg = _cfg(cfg_factory, tmp_path, "loss.lds=false")
    seen = _step_with_spies(cfg, monkeypatch)
    (jitter, sigma), = [s for s in seen["sigma"] if s[0]]  # one jittered call, for the training batch
    ages = seen["ages"]
    base = label_sigma(ages, cfg.loss, K, jitter=False)
    torch.testing.assert_close(base, 1.0 + 2.0 * (ages / 80).clamp(0, 1))  # sigma_min 1 at 0 to sigma_max 3 at 80
    offset = sigma - base
    assert offset.abs().max() <= 0.3 + 1e-6 and offset.std() > 0.05  # jittered, within the configured +-0.3
    torch.testing.assert_close(seen["target"], target_distribution(ages, sigma, K))
    assert seen["loss"] == pytest.approx(_reference_loss(seen, cfg, torch.ones_like(ages)), rel=1e-5)


def test_the_step_weights_each_face_by_the_lds_weight_of_its_age(cfg_factory, tmp_path, monkeypatch):
    cfg = _cfg(cfg_factory, tmp_path, "loss.lds=true", "loss.lds_sigma=3", "loss.lds_clip=5")
    seen = _step_with_spies(cfg, monkeypatch)
    table = lds_weights(seen["train_ages"], K, sigma=3.0, clip=5.0)
    expected = table[seen["ages"].round().long().clamp(0, K - 1)]
    assert expected.std() > 0.05  # the batch's ages have different weights, so the check means something
    torch.testing.assert_close(seen["weights"], expected)
    assert seen["loss"] == pytest.approx(_reference_loss(seen, cfg, expected), rel=1e-5)


def test_plain_dldl_has_a_fixed_sigma_of_two_and_no_ranking_term(cfg_factory, tmp_path, monkeypatch):
    cfg = _cfg(cfg_factory, tmp_path, "loss.dldl_v2=false")
    seen = _step_with_spies(cfg, monkeypatch)
    torch.testing.assert_close(seen["target"], target_distribution(seen["ages"], 2.0, K))
    assert seen["loss"] == pytest.approx(_reference_loss(seen, cfg, torch.ones_like(seen["ages"])), rel=1e-5)
