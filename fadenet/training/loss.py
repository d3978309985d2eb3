"""The DLDL-v2 age loss: Gaussian label distributions, KL + L1 + ranking (+ mean-variance),
with optional label-distribution-smoothing (LDS) re-weighting of rare ages.

Ages are the integers ``0..num_classes-1``; a model's logits ``[B, K]`` give a distribution
over them. Targets are built once per sample (:func:`label_sigma`, :func:`target_distribution`)
so that mixup can mix target distributions, ages and LDS weights before they reach
:class:`DLDLLoss`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fadenet.config import LossConfig

# Keeps the predicted CDF inside (0, 1) so that both logs of the BCE stay finite; in float32
# 1 - 1e-6 is still distinguishable from 1.
CDF_EPS = 1e-6


def label_sigma(ages: Tensor, cfg: LossConfig, num_classes: int, jitter: bool,
                generator: torch.Generator | None = None) -> Tensor:
    """Per-sample width of the target Gaussian, float32 of the shape of ``ages``.

    DLDL-v2: grows linearly from ``cfg.sigma_min`` at age 0 to ``cfg.sigma_max`` at age
    ``num_classes - 1`` (ages outside that range get the end value), plus, when ``jitter``,
    uniform noise in ``[-cfg.sigma_jitter, +cfg.sigma_jitter]`` drawn from ``generator``.
    Plain DLDL (``cfg.dldl_v2`` False): ``cfg.plain_sigma`` everywhere, never jittered.
    """
    ages = torch.as_tensor(ages).float()
    if not cfg.dldl_v2:
        return torch.full_like(ages, cfg.plain_sigma)
    fraction = (ages / (num_classes - 1)).clamp(0.0, 1.0)
    sigma = cfg.sigma_min + (cfg.sigma_max - cfg.sigma_min) * fraction
    if jitter:
        sigma = sigma + _uniform_noise(ages.shape, cfg.sigma_jitter, generator).to(ages.device)
    return sigma


def _uniform_noise(shape: torch.Size, half_width: float,
                   generator: torch.Generator | None) -> Tensor:
    # Drawn on the generator's own device: a seeded CPU generator then gives the same noise
    # whether the batch lives on the CPU or a GPU.
    device = generator.device if generator is not None else torch.device("cpu")
    unit = torch.rand(shape, generator=generator, device=device)
    return (2.0 * unit - 1.0) * half_width


def target_distribution(ages: Tensor, sigma: Tensor | float, num_classes: int) -> Tensor:
    """Gaussian over the integer ages ``0..num_classes-1`` centred on each (float) age,
    normalised to sum 1: float32 ``[B, num_classes]``."""
    ages = torch.as_tensor(ages).float()
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=ages.device)
    bins = torch.arange(num_classes, dtype=torch.float32, device=ages.device)
    log_density = -0.5 * ((bins - ages[:, None]) / sigma.reshape(-1, 1)) ** 2
    # softmax = exp then normalise, without underflow for ages far outside 0..K-1
    return torch.softmax(log_density, dim=1)


def lds_weights(train_ages: Tensor, num_classes: int, sigma: float = 4.0,
                clip: float = 10.0) -> Tensor:
    """Label-distribution-smoothing weight of each age ``0..num_classes-1``: float32 ``[K]``.

    1. Histogram of the training ages (rounded, clamped to ``0..K-1``).
    2. Convolved with a Gaussian of ``sigma`` bins, truncated at 4 sigma and normalised to
       sum 1; at the ends the kernel falls off the range (zero padding): that mass is lost,
       not folded back, so ages near 0 and K-1 read as somewhat rarer than inside the range.
    3. Weight = 1 / smoothed density.
    4. Normalised so that the mean weight over the *training samples* is 1, i.e.
       ``sum_k count_k * w_k / N = 1``. The spec says "normalised to mean 1"; the per-sample
       mean is the one that keeps the expected loss of a batch, and so the effective learning
       rate, equal to the unweighted loss. A mean over the K ages would instead depend on how
       many rare or empty ages the range holds.
    5. Clipped at ``clip`` (after normalising, so the clip is on the scale the loss sees; the
       per-sample mean may then drop slightly below 1). Ages whose smoothed density is zero
       (far from every training age) get ``clip``: they are at least as rare as any other.
    """
    if sigma <= 0:
        raise ValueError(f"LDS sigma={sigma} must be positive")
    ages = torch.as_tensor(train_ages).detach().cpu().float()
    counts = torch.bincount(ages.round().long().clamp(0, num_classes - 1),
                            minlength=num_classes).float()
    density = _smooth(counts, sigma)
    inverse = torch.where(density > 0, 1.0 / density, torch.zeros_like(density))
    inverse = inverse * counts.sum() / (counts * inverse).sum()
    return torch.where(density > 0, inverse.clamp(max=clip), torch.full_like(inverse, clip))


def _smooth(counts: Tensor, sigma: float) -> Tensor:
    radius = math.ceil(4 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    # zero padding: the kernel's mass that falls off either end is lost, not folded back
    return F.conv1d(counts[None, None], kernel[None, None], padding=radius)[0, 0]


class DLDLLoss(nn.Module):
    """KL(target || predicted) + l1_weight * |E[p] - age| + rank_weight * ranking BCE
    + mv_weight * mean-variance, with LDS weights on the per-sample KL and L1 terms.

    Plain DLDL (``cfg.dldl_v2`` False) is KL + l1_weight * L1 only, never weighted.
    Everything is computed in float32 with autocast switched off, so half-precision logits
    give the same loss as float32 ones.
    """

    def __init__(self, cfg: LossConfig, num_classes: int, age_weights: Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        weights = None if age_weights is None else torch.as_tensor(age_weights).float()
        if weights is not None and weights.shape != (num_classes,):
            raise ValueError(f"age_weights has shape {tuple(weights.shape)}, "
                             f"expected ({num_classes},)")
        # a buffer follows the module across .to(device) and lands in the state dict
        self.register_buffer("age_weights", weights)
        self.register_buffer("bins", torch.arange(num_classes, dtype=torch.float32),
                             persistent=False)

    @property
    def weighted(self) -> bool:
        return self.cfg.dldl_v2 and self.cfg.lds

    def sample_weights(self, ages: Tensor) -> Tensor:
        """LDS weight of each sample, looked up at its rounded age (clamped to the range);
        ones when re-weighting is off or no age weights were given."""
        ages = torch.as_tensor(ages, device=self.bins.device).float()
        if not self.weighted or self.age_weights is None:
            return torch.ones_like(ages)
        index = ages.round().long().clamp(0, self.num_classes - 1)
        return self.age_weights[index]

    def forward(self, logits: Tensor, target: Tensor, ages: Tensor,
                sample_weights: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``logits`` and ``target`` ``[B, K]``, ``ages`` ``[B]`` (float after mixup),
        ``sample_weights`` ``[B]`` (looked up from ``ages`` when omitted; pass the mixed
        weights for mixup batches). Returns the total and its detached parts
        ``kl, l1, rank, mv, total`` where ``total = kl + l1_weight*l1 + rank_weight*rank
        + mv_weight*mv`` (rank and mv are 0 for plain DLDL)."""
        if logits.shape != target.shape or logits.shape != (ages.shape[0], self.num_classes):
            raise ValueError(f"logits {tuple(logits.shape)}, target {tuple(target.shape)} and "
                             f"ages {tuple(ages.shape)} do not fit {self.num_classes} classes")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._loss(logits.float(), target.float(), ages.float(), sample_weights)

    def _loss(self, logits: Tensor, target: Tensor, ages: Tensor,
              sample_weights: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        weights = self._weights(ages, sample_weights)
        log_p = F.log_softmax(logits, dim=1)
        p = log_p.exp()
        mean_age = p @ self.bins
        kl = (weights * kl_per_sample(log_p, target)).mean()
        l1 = (weights * (mean_age - ages).abs()).mean()
        zero = logits.new_zeros(())
        rank = ranking_loss(p, target) if cfg.dldl_v2 else zero
        mv = mean_variance_loss(p, mean_age, ages, self.bins) if cfg.dldl_v2 else zero
        total = kl + cfg.l1_weight * l1 + cfg.rank_weight * rank + cfg.mv_weight * mv
        parts = {"kl": kl, "l1": l1, "rank": rank, "mv": mv, "total": total}
        return total, {name: value.detach() for name, value in parts.items()}

    def _weights(self, ages: Tensor, given: Tensor | None) -> Tensor:
        if not self.weighted:
            return torch.ones_like(ages)
        if given is None:
            return self.sample_weights(ages)
        return given.to(ages).reshape(ages.shape)


def kl_per_sample(log_p: Tensor, target: Tensor) -> Tensor:
    """KL(target || p) of each row, ``sum_k t log t - t log p`` with 0 log 0 = 0: ``[B]``."""
    # bins outside the target's support add nothing, even where log p is -inf (0 * -inf = nan)
    cross = torch.where(target > 0, target * log_p, torch.zeros_like(log_p))
    return (torch.xlogy(target, target) - cross).sum(dim=1)


def ranking_loss(p: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy between the predicted and target CDFs over the first K-1 bins
    (the last is 1 for both), mean over bins and batch."""
    predicted_cdf = p.cumsum(dim=1)[:, :-1].clamp(CDF_EPS, 1.0 - CDF_EPS)
    target_cdf = target.cumsum(dim=1)[:, :-1]
    # Written out rather than F.binary_cross_entropy, which raises on NaN inputs: a diverged
    # step must reach the trainer's finite-loss check as NaN, not as an opaque RuntimeError.
    bce = -(target_cdf * predicted_cdf.log() + (1.0 - target_cdf) * (1.0 - predicted_cdf).log())
    return bce.mean()


def mean_variance_loss(p: Tensor, mean_age: Tensor, ages: Tensor, bins: Tensor) -> Tensor:
    """Pan et al. (2018): ``0.5 * (E[p] - age)^2 + Var[p]``, mean over the batch."""
    variance = (p * (bins - mean_age[:, None]) ** 2).sum(dim=1)
    return (0.5 * (mean_age - ages) ** 2 + variance).mean()
