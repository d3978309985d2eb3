"""The DLDL-v2 loss against values worked out by hand."""
import math

import numpy as np

import pytest
import torch

from fadenet.config import LossConfig
from fadenet.training.loss import DLDLLoss, label_sigma, lds_weights, target_distribution

K = 81
# One 3-class case used throughout: predicted p = [0.2, 0.3, 0.5], target t = [0, 0.25, 0.75].
P = torch.tensor([[0.2, 0.3, 0.5]])
T = torch.tensor([[0.0, 0.25, 0.75]])


def parts_of(cfg, logits, target, ages, age_weights=None, sample_weights=None):
    loss = DLDLLoss(cfg, logits.shape[1], age_weights)
    return loss(logits, target, ages, sample_weights)[1]


# ---- label sigma -----------------------------------------------------------------------

def test_sigma_grows_linearly_from_one_to_three():
    sigma = label_sigma(torch.tensor([0, 40, 80]), LossConfig(), K, jitter=False)
    assert torch.allclose(sigma, torch.tensor([1.0, 2.0, 3.0]))


def test_jitter_stays_within_bounds_and_is_reproducible():
    ages = torch.full((2000,), 40)
    draw = lambda seed: label_sigma(ages, LossConfig(), K, jitter=True,
                                    generator=torch.Generator().manual_seed(seed))
    sigma = draw(0)
    assert sigma.min() >= 1.8 and sigma.max() <= 2.2
    assert sigma.min() < 1.82 and sigma.max() > 2.18  # the whole +-0.2 band is used
    assert torch.equal(sigma, draw(0))
    assert not torch.equal(sigma, draw(1))


def test_plain_dldl_sigma_is_fixed_and_never_jittered():
    sigma = label_sigma(torch.tensor([0, 40, 80]), LossConfig(dldl_v2=False), K, jitter=True)
    assert torch.equal(sigma, torch.full((3,), 2.0))


# ---- target distribution -----------------------------------------------------------------

def test_target_matches_hand_computed_gaussian():
    # exp(-(k-2)^2 / 2) for k = 0..4 is e^-2, e^-0.5, 1, e^-0.5, e^-2; their sum is 2.4837319
    expected = torch.tensor([0.0544887, 0.2442013, 0.4026199, 0.2442013, 0.0544887])
    target = target_distribution(torch.tensor([2.0]), 1.0, 5)
    assert torch.allclose(target[0], expected, atol=1e-6)
    assert target.argmax().item() == 2


def test_target_rows_sum_to_one_with_per_sample_sigma():
    ages = torch.tensor([0.0, 17.3, 80.0])
    target = target_distribution(ages, label_sigma(ages, LossConfig(), K, jitter=False), K)
    assert target.shape == (3, K)
    assert torch.allclose(target.sum(dim=1), torch.ones(3))
    assert target.argmax(dim=1).tolist() == [0, 17, 80]


def test_half_age_is_symmetric_between_its_neighbours():
    target = target_distribution(torch.tensor([2.5]), 1.0, 5)[0]
    assert torch.isclose(target[2], target[3]) and torch.isclose(target[1], target[4])
    assert target[2] > target[1]


# ---- loss terms --------------------------------------------------------------------------

def test_kl_is_zero_when_prediction_equals_target():
    target = target_distribution(torch.tensor([3.0, 40.0]), torch.tensor([1.0, 2.0]), K)
    parts = parts_of(LossConfig(lds=False), target.log(), target, torch.tensor([3.0, 40.0]))
    assert abs(parts["kl"].item()) < 1e-6


def test_kl_matches_hand_value_with_zero_target_entry():
    # 0*log(0/0.2) counts as 0: KL = 0.25 ln(0.25/0.3) + 0.75 ln(0.75/0.5)
    expected = 0.25 * math.log(0.25 / 0.3) + 0.75 * math.log(1.5)
    parts = parts_of(LossConfig(lds=False), P.log(), T, torch.tensor([2.0]))
    assert parts["kl"].item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.2585184, abs=1e-7)


def test_l1_is_distance_of_expected_age():
    # E[p] = 0*0.2 + 1*0.3 + 2*0.5 = 1.3 for both rows; |1.3 - 2| = 0.7, |1.3 - 0.5| = 0.8
    logits = P.log().repeat(2, 1)
    parts = parts_of(LossConfig(lds=False), logits, T.repeat(2, 1), torch.tensor([2.0, 0.5]))
    assert parts["l1"].item() == pytest.approx(0.75, abs=1e-6)


def test_rank_loss_matches_hand_bce_of_cdfs():
    # predicted CDF over the first 2 bins [0.2, 0.5], target CDF [0, 0.25]:
    # bin 0: -ln(0.8); bin 1: -(0.25 ln 0.5 + 0.75 ln 0.5) = ln 2
    expected = (-math.log(0.8) + math.log(2.0)) / 2
    parts = parts_of(LossConfig(lds=False), P.log(), T, torch.tensor([2.0]))
    assert parts["rank"].item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.4581454, abs=1e-7)


def test_rank_loss_stays_finite_for_saturated_predictions():
    logits = torch.tensor([[100.0, -100.0, -100.0]], requires_grad=True)
    parts = parts_of(LossConfig(lds=False), logits, T, torch.tensor([2.0]))
    assert torch.isfinite(parts["rank"]) and parts["rank"] > 1.0


def test_mean_variance_matches_hand_value():
    # E = 1.3; Var = 0.2*1.3^2 + 0.3*0.3^2 + 0.5*0.7^2 = 0.61; 0.5*(1.3-2)^2 + 0.61 = 0.855
    parts = parts_of(LossConfig(lds=False, mv_weight=0.1), P.log(), T, torch.tensor([2.0]))
    assert parts["mv"].item() == pytest.approx(0.855, abs=1e-6)


def test_loss_under_bfloat16_autocast_is_computed_in_float32():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, K)
    features = torch.randn(32, 16)
    ages = torch.randint(0, K, (32,)).float()
    target = target_distribution(ages, label_sigma(ages, LossConfig(), K, jitter=False), K)
    loss = DLDLLoss(LossConfig(lds=False), K, None)
    reference_total, reference = loss(layer(features), target, ages)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(features)
        total, parts = loss(logits, target, ages)
    assert logits.dtype == torch.bfloat16
    assert total.dtype == torch.float32 and parts["rank"].dtype == torch.float32
    # only the bf16 rounding of the logits themselves separates the two
    assert parts["rank"].item() == pytest.approx(reference["rank"].item(), rel=2e-2)
    assert total.item() == pytest.approx(reference_total.item(), rel=2e-2)
    exact = loss(logits.float(), target, ages)[1]["rank"]
    assert parts["rank"].item() == pytest.approx(exact.item(), rel=1e-6)


# ---- LDS weights -------------------------------------------------------------------------

def lds_by_hand(counts, sigma, clip):
    """The LDS recipe step by step in plain Python: truncated Gaussian kernel (4 sigma),
    zero-padded convolution, inverse, per-sample mean 1, clip; zero density -> clip."""
    radius = math.ceil(4 * sigma)
    kernel = [math.exp(-0.5 * (o / sigma) ** 2) for o in range(-radius, radius + 1)]
    kernel = [k / sum(kernel) for k in kernel]
    density = [sum(counts[j] * kernel[j - i + radius] for j in range(len(counts))
                   if abs(j - i) <= radius) for i in range(len(counts))]
    inverse = [1 / d if d > 0 else 0.0 for d in density]
    scale = sum(counts) / sum(c * w for c, w in zip(counts, inverse))
    return [min(w * scale, clip) if d > 0 else clip for w, d in zip(inverse, density)]


def test_lds_weights_match_step_by_step_computation():
    # counts [3, 1, 1, 0, 0, 0, 0]; sigma 0.5 -> kernel radius 2, so ages 5 and 6 are out of
    # reach of every training age (zero density) and age 4 only gets the e^-8 kernel tail.
    train_ages = torch.tensor([0, 0, 0, 1, 2])
    counts = [3, 1, 1, 0, 0, 0, 0]
    for clip in (1e9, 10.0):
        weights = lds_weights(train_ages, 7, sigma=0.5, clip=clip)
        expected = torch.tensor(lds_by_hand(counts, 0.5, clip))
        assert torch.allclose(weights, expected, rtol=1e-5)
    assert weights[5] == weights[6] == 10.0   # zero density -> clip value
    assert weights[4] == 10.0                 # 1 / e^-8-sized density, clipped


def test_lds_gives_rare_ages_larger_weights():
    train_ages = torch.tensor([0, 0, 0, 1, 2])
    weights = lds_weights(train_ages, 7, sigma=0.5, clip=1e9)
    assert weights[0] < weights[1] < weights[2] < weights[3]


def test_lds_mean_over_training_samples_is_one_before_clipping():
    generator = torch.Generator().manual_seed(0)
    train_ages = (torch.randn(5000, generator=generator) * 12 + 30).round().clamp(0, K - 1)
    weights = lds_weights(train_ages, K, clip=float("inf"))
    assert weights[train_ages.long()].mean().item() == pytest.approx(1.0, abs=1e-5)
    clipped = lds_weights(train_ages, K, clip=2.0)
    assert clipped.max() == 2.0
    assert torch.equal(clipped, weights.clamp(max=2.0))


def test_sample_weights_look_up_rounded_clamped_ages():
    age_weights = torch.arange(K, dtype=torch.float32)
    loss = DLDLLoss(LossConfig(), K, age_weights)
    looked_up = loss.sample_weights(torch.tensor([-3.0, 2.4, 2.6, 100.0]))
    assert looked_up.tolist() == [0.0, 2.0, 3.0, 80.0]


# ---- total, weighting, plain DLDL --------------------------------------------------------

def random_batch(batch=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, K, generator=generator, requires_grad=True)
    ages = torch.randint(0, K, (batch,), generator=generator).float()
    target = target_distribution(ages, label_sigma(ages, LossConfig(), K, jitter=False), K)
    return logits, target, ages


def test_total_is_weighted_sum_of_parts():
    cfg = LossConfig(mv_weight=0.1)
    logits, target, ages = random_batch()
    total, parts = DLDLLoss(cfg, K, torch.rand(K) + 0.5)(logits, target, ages)
    by_hand = parts["kl"] + 0.1 * parts["l1"] + 0.3 * parts["rank"] + 0.1 * parts["mv"]
    assert total.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert parts["total"].item() == pytest.approx(total.item(), rel=1e-6)
    assert all(not part.requires_grad for part in parts.values())


def test_sample_weights_scale_kl_and_l1_only():
    logits, target, ages = P.log().repeat(2, 1), T.repeat(2, 1), torch.tensor([2.0, 2.0])
    plain = parts_of(LossConfig(), logits, target, ages)
    weighted = parts_of(LossConfig(), logits, target, ages, sample_weights=torch.tensor([3.0, 0.0]))
    # mean of (3*x, 0*x) over the batch = 1.5*x
    assert weighted["kl"].item() == pytest.approx(1.5 * plain["kl"].item(), rel=1e-6)
    assert weighted["l1"].item() == pytest.approx(1.5 * plain["l1"].item(), rel=1e-6)
    assert weighted["rank"].item() == pytest.approx(plain["rank"].item(), rel=1e-6)


def test_age_weights_are_used_when_no_sample_weights_given():
    logits, target, ages = random_batch()
    age_weights = torch.rand(K) + 0.5
    loss = DLDLLoss(LossConfig(), K, age_weights)
    implicit = loss(logits, target, ages)[1]
    explicit = loss(logits, target, ages, loss.sample_weights(ages))[1]
    unweighted = DLDLLoss(LossConfig(), K, None)(logits, target, ages)[1]
    assert implicit["kl"].item() == pytest.approx(explicit["kl"].item(), rel=1e-6)
    assert implicit["kl"].item() != pytest.approx(unweighted["kl"].item(), rel=1e-3)


def test_lds_off_ignores_weights():
    logits, target, ages = random_batch()
    off = LossConfig(lds=False)
    ignored = parts_of(off, logits, target, ages, torch.rand(K), torch.rand(6))
    assert torch.equal(ignored["total"], parts_of(off, logits, target, ages)["total"])


def test_plain_dldl_is_kl_plus_l1_unweighted():
    cfg = LossConfig(dldl_v2=False, mv_weight=0.1)
    logits, target, ages = random_batch()
    total, parts = DLDLLoss(cfg, K, torch.rand(K))(logits, target, ages, torch.rand(6))
    unweighted = parts_of(LossConfig(lds=False), logits, target, ages)
    assert parts["rank"] == 0 and parts["mv"] == 0
    assert parts["kl"].item() == pytest.approx(unweighted["kl"].item(), rel=1e-6)
    assert parts["l1"].item() == pytest.approx(unweighted["l1"].item(), rel=1e-6)
    assert total.item() == pytest.approx((parts["kl"] + 0.1 * parts["l1"]).item(), rel=1e-6)


def test_gradients_flow_to_every_logit():
    logits, target, ages = random_batch()
    total, _ = DLDLLoss(LossConfig(mv_weight=0.1), K, torch.rand(K) + 0.5)(logits, target, ages)
    total.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad.abs().sum(dim=1) > 0).all()


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="do not fit"):
        DLDLLoss(LossConfig(), K, None)(torch.zeros(2, K), torch.zeros(2, K - 1), torch.zeros(2))


def test_age_spread_is_the_distributions_standard_deviation():
    from fadenet.model import age_spread
    probs = np.array([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    # by hand: ages {1, 2} equally likely -> sd 0.5; a point mass -> 0; uniform over 0..3 -> sqrt(1.25)
    assert np.allclose(age_spread(probs), [0.5, 0.0, np.sqrt(1.25)])
