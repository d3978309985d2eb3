"""The recipe's pieces and the objects a run trains, built from a resolved configuration: the
rows trained on, the learning-rate schedule, the weight average, and :class:`Parts` (network,
average, optimiser, loss, batches) that :class:`fadenet.training.trainer.Trainer` receives."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from ..config import ConfigError
from ..data import FaceSet, Split
from ..data.cache import stratified_pick
from ..data.loader import Batches
from ..model import AgeNet
from ..resolve import Resolved
from .loss import DLDLLoss, lds_weights


def training_rows(faces: FaceSet, split: Split, fraction: float, seed: int) -> np.ndarray:
    """The training split, or a fixed age-stratified ``fraction`` of it (``train.fraction``)."""
    if fraction >= 1.0:
        return split.train
    n = max(1, round(fraction * len(split.train)))
    return split.train[stratified_pick(faces.ages[split.train], n, seed)]


def lr_at(step: int, total: int, warmup: int, lr: float, min_ratio: float, schedule: str = "cosine") -> float:
    """Linear warm-up for ``warmup`` steps, then a cosine or linear decay from ``lr`` to
    ``lr * min_ratio`` at step ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    left = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return lr * (min_ratio + (1 - min_ratio) * left)


def ema_update(decay: float, warmup: bool = True):
    """EMA for AveragedModel, with the usual warm-up (decay (1+n)/(10+n) while that is smaller)
    so that short runs are not dominated by their first, untrained weights. The warm-up reaches
    a decay of 0.99 only after 890 steps and 0.995 after 1,790: in a run of a few epochs it, not
    ``decay``, sets the average. ``warmup=False`` averages with ``decay`` from the first step."""
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        if not averaged[0].is_floating_point():  # BatchNorm's batch counter
            for a, c in zip(averaged, current):
                a.copy_(c)
            return
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        torch._foreach_lerp_(averaged, current, 1 - d)
    return update


@dataclass
class Parts:
    """What one process of a run trains."""
    model: AgeNet
    ema: AveragedModel          # the weight average: what is validated and kept
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss: DLDLLoss
    batches: Batches
    train_rows: np.ndarray      # the faces trained on (all of the training split, or a share)
    memory_format: torch.memory_format

    def state_dict(self) -> dict:
        """What a resumed run needs of the parts (plain tensors and numbers)."""
        return {"model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                "ema_averaged": int(self.ema.n_averaged), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.ema.n_averaged.fill_(state["ema_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    def set_lr(self, lr: float) -> None:
        """The scheduled rate, times each optimiser group's ``lr_scale`` (see ``AgeNet.optimizer_groups``)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]


def build_parts(setup: Resolved, faces: FaceSet, split: Split, device: torch.device,
                rank: int = 0, world: int = 1) -> Parts:
    """The parts of a run of ``setup`` for process ``rank`` of ``world``, on ``device``, built in
    a fixed order from the seed so that every process starts from the same weights."""
    cfg, t = setup.config, setup.config.train
    if t.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on a CPU")
    if t.sync_bn and world > 1 and device.type != "cuda":
        raise ConfigError("train.sync_bn=true needs CUDA devices (SyncBatchNorm); on CPUs each process "
                          "normalises its share of the batch: set train.sync_bn=false")
    torch.manual_seed(t.seed)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = setup.network().to(device, memory_format=memory_format)
    if t.sync_bn and world > 1:  # same parameters and buffers: checkpoints load anywhere
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = AveragedModel(model, multi_avg_fn=ema_update(t.ema_decay, t.ema_warmup), use_buffers=True)
    fused = {"fused": True} if t.fused_adamw else {}
    optimizer = torch.optim.AdamW(model.optimizer_groups(t.weight_decay, t.backbone_lr_scale), lr=t.lr, **fused)
    scaler = torch.amp.GradScaler("cuda", enabled=t.precision == "fp16")
    k = cfg.model.num_classes
    rows = training_rows(faces, split, t.fraction, cfg.data.seed)
    weights = lds_weights(torch.as_tensor(faces.ages[rows]), k, cfg.loss.lds_sigma, cfg.loss.lds_clip) \
        if cfg.loss.lds else None
    loss = DLDLLoss(cfg.loss, k, weights).to(device)
    batches = Batches(faces.images, faces.ages, rows, t.batch_size, train=True, seed=t.seed, erase_p=t.erase_p,
                      augment=t.augment, strength=t.aug_strength, shard=(rank, world), device=device)
    return Parts(model, ema, optimizer, scaler, loss, batches, rows, memory_format)
