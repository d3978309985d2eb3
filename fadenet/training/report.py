"""Tables and figures of the training chapter (notebook 03): the recipe as run, and the eight
training plots of the FADE-Net README, drawn from a run's ``log.csv`` and ``batches.csv``."""
from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import pandas as pd
import torch

from ..config import Config
from .loss import label_sigma, lds_weights, target_distribution
from .run import Run

PLOTS = ("loss", "mae", "lr", "gap", "stability", "time", "batch_loss_distribution", "loss_and_lr")


def recipe_table(cfg: Config, run: Run) -> pd.DataFrame:
    """What the run did, next to the paper's recipe where they differ."""
    t, m = cfg.train, run.meta
    paper = Config().train
    rows = [
        ("network", f"{m['arch']} on {m['backbone']}", "fadenet on mobilenet_v3_large"),
        ("initial weights", m["pretrained"] + (" (fallback: see warning)" if m["init_warning"] else ""),
         "imagenet (IMAGENET1K_V2)"),
        ("data", f"{m['source']}, {m['size']}px, split {m['split']}: {m['trained_on']:,} train / "
                 f"{m['val']:,} val / {m['test']:,} test", "AFAD-Full, 224px, 80-10-10"),
        ("epochs (backbone frozen)", f"{t.epochs} ({t.freeze_epochs if m['pretrained'] == 'imagenet' else 0})",
         f"{paper.epochs} ({paper.freeze_epochs})"),
        ("batch, optimiser", f"{t.batch_size}, AdamW lr {t.lr:g}, weight decay {t.weight_decay:g}",
         f"{paper.batch_size}, AdamW lr {paper.lr:g}, weight decay {paper.weight_decay:g}"),
        ("schedule", schedule_text(t), schedule_text(paper)),
        ("input size in training", sizes_text(t, cfg.data.size), f"{paper.sizes or 224}px"),
        ("augmentation", augmentation_text(t), augmentation_text(paper)),
        ("mixup", mixup_text(t), mixup_text(paper)),
        ("EMA decay, gradient clip", f"{ema_text(t)}, {t.grad_clip:g}", f"{ema_text(paper)}, {paper.grad_clip:g}"),
        ("training compute", f"{m.get('epoch_equivalents', float('nan')):.2f} epoch-equivalents (epochs of the "
                             "whole training split at 112 px)", ""),
        ("loss", loss_text(cfg.loss), loss_text(Config().loss)),
        ("seed", str(t.seed), "42 and 1337"),
    ]
    return pd.DataFrame(rows, columns=["", "this run", "paper"])


def schedule_text(train) -> str:
    warmup = f"warm-up {train.warmup_epochs:g} epochs, " if train.warmup_epochs else ""
    return f"{warmup}{train.schedule} to {train.min_lr_ratio:g} x lr"


def sizes_text(train, size: int) -> str:
    if not train.sizes:
        return f"{size}px"
    return " then ".join(f"{s}px" for s in train.sizes) + f" in equal stages (evaluated at {size}px)"


def augmentation_text(train) -> str:
    if not train.augment:
        return "none"
    what = ("flips only" if train.aug_strength == 0 else
            f"flip, affine, colour jitter and blur at {train.aug_strength:g} x the paper's ranges")
    return what + (f", safe erasing p {train.erase_p:g}" if train.erase_p else "")


def ema_text(train) -> str:
    return f"{train.ema_decay:g}" + (" (after its warm-up)" if train.ema_warmup else " (from the first step)")


def mixup_text(train) -> str:
    return f"alpha {train.mixup_alpha:g} on {train.mixup_prob:.0%} of batches" if train.mixup_prob else "none"


def loss_text(loss) -> str:
    """The loss a LossConfig describes, in words."""
    if not loss.dldl_v2:
        return f"plain DLDL (KL + {loss.l1_weight:g} L1, sigma {loss.plain_sigma:g})"
    terms = f"KL + {loss.l1_weight:g} L1 + {loss.rank_weight:g} rank" + (
        f" + {loss.mv_weight:g} mean-variance" if loss.mv_weight else "")
    return f"DLDL-v2 ({terms})" + (", LDS weights" if loss.lds else ", no LDS")


def results_table(run: Run) -> pd.DataFrame:
    m, h = run.meta, run.history
    rows = [("best validation MAE", f"{m['best_val_mae']:.3f} (epoch {m['best_epoch']})"),
            ("test MAE (EMA weights of that epoch, no TTA)", f"{m['test_mae']:.3f}"),
            ("epochs run", str(m["epochs_done"])),
            ("training time", f"{m['train_seconds'] / 60:.1f} min ({h['images_per_second'].mean():.0f} images/s)"),
            ("training mode", f"{m['precision']}, {'compiled' if m['compiled'] else 'eager'}, "
                              f"{m['processes']} process(es) x {m['threads_per_process']} thread(s)"),
            ("parameters", f"{m['parameters']:,}")]
    return pd.DataFrame(rows, columns=["", "value"])


def loss_figure(cfg: Config, train_ages: np.ndarray) -> plt.Figure:
    """Left: DLDL-v2 target distributions, wider for older faces, next to plain DLDL's fixed
    width. Right: the LDS weight of each age against the training split's age histogram."""
    k = cfg.model.num_classes
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.6))
    v2, plain = dataclasses.replace(cfg.loss, dldl_v2=True), dataclasses.replace(cfg.loss, dldl_v2=False)
    for age, colour in zip((5, 30, 70), ("tab:blue", "tab:green", "tab:red")):
        ages = torch.tensor([float(age)])
        for loss_cfg, style, name in ((v2, "-", "DLDL-v2"), (plain, ":", "plain DLDL")):
            sigma = label_sigma(ages, loss_cfg, k, jitter=False)
            left.plot(target_distribution(ages, sigma, k)[0], style, color=colour,
                      label=f"age {age}, {name} (sigma {sigma.item():.2f})")
    left.set(title="target distributions", xlabel="age", ylabel="probability")
    left.legend(fontsize=7)
    counts = np.bincount(np.clip(train_ages, 0, k - 1).astype(int), minlength=k)
    weights = lds_weights(torch.as_tensor(train_ages), k, cfg.loss.lds_sigma, cfg.loss.lds_clip).numpy()
    right.bar(np.arange(k), counts, color="0.8", label="training faces per age")
    right.set(title="LDS re-weighting" + ("" if cfg.loss.lds else " (off in this recipe)"),
              xlabel="age", ylabel="faces")
    twin = right.twinx()
    twin.plot(np.arange(k), weights, color="tab:orange", label="LDS weight")
    twin.set_ylabel("weight of the KL and L1 terms", color="tab:orange")
    right.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def training_figure(run: Run) -> plt.Figure:
    """The eight plots in one figure, two rows of four."""
    batches = pd.read_csv(run.folder / "batches.csv")
    history = run.history.copy()
    history.attrs["mixup_prob"] = run.config.train.mixup_prob  # the legends say whether batches were mixed
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.2))
    for name, ax in zip(PLOTS, axes.flat):
        DRAW[name](ax, history, batches)
        if ax.get_xlabel() == "epoch":
            ax.set_xlim(0.5, len(history) + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.tight_layout()
    return fig


def _loss(ax, h, b):
    mixup = f", mixup on {h.attrs['mixup_prob']:.0%} of batches" if h.attrs["mixup_prob"] else ""
    ax.plot(h["epoch"], h["train_loss"], "o-", label=f"train (augmented{mixup})")
    ax.plot(h["epoch"], h["val_loss"], "s-", label="validation (EMA weights)")
    ax.set(title="1 loss", xlabel="epoch", ylabel="DLDL loss")
    ax.legend(fontsize=8)


def _mae(ax, h, b):
    ax.plot(h["epoch"], h["train_mae"], "o-",
            label="train (batches without mixup)" if h.attrs["mixup_prob"] else "train (augmented)")
    ax.plot(h["epoch"], h["val_mae"], "s-", label="validation (EMA weights)")
    best = h["val_mae"].idxmin()
    ax.plot(h["epoch"][best], h["val_mae"][best], "*", color="black", ms=11, zorder=3,
            label=f"best validation {h['val_mae'][best]:.2f} (epoch {h['epoch'][best]})")
    ax.set(title="2 MAE", xlabel="epoch", ylabel="MAE (years)")
    ax.legend(fontsize=8)


def _lr(ax, h, b):
    ax.plot(b["step"], b["lr"])
    ax.set(title="3 learning rate", xlabel="step", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))


def _gap(ax, h, b):
    ax.bar(h["epoch"], h["val_loss"] - h["train_loss"], color="tab:purple")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set(title="4 generalisation gap", xlabel="epoch", ylabel="val loss - train loss")


def _stability(ax, h, b):
    ax.plot(b["step"], b["loss"], lw=0.5, alpha=0.45, label="batch")
    smooth, window = _smoothed(b["loss"])
    ax.plot(b["step"], smooth, lw=1.5, label=f"centred mean of {window}")
    ax.set(title="5 per-batch loss", xlabel="step", ylabel="loss")
    ax.legend(fontsize=8)


def _time(ax, h, b):
    ax.bar(h["epoch"], h["seconds"], color=np.where(h["frozen_backbone"], "tab:cyan", "tab:blue"))
    frozen = " (light: backbone frozen)" if h["frozen_backbone"].any() else ""
    ax.set(title=f"6 time per epoch{frozen}", xlabel="epoch", ylabel="seconds")


def _distribution(ax, h, b):
    epochs = sorted(b["epoch"].unique())
    positions = [e + 1 for e in epochs]
    ax.boxplot([b.loc[b["epoch"] == e, "loss"] for e in epochs], positions=positions, showfliers=False)
    ax.set_xticks(positions, labels=[str(p) for p in positions])
    ax.set(title="7 batch-loss distribution", xlabel="epoch", ylabel="loss")


def _loss_and_lr(ax, h, b):
    ax.plot(b["step"], _smoothed(b["loss"])[0], color="tab:blue")
    ax.set(title="8 loss with learning rate", xlabel="step", ylabel="loss (smoothed)")
    twin = ax.twinx()
    twin.plot(b["step"], b["lr"], color="tab:orange", lw=1)
    twin.set_ylabel("learning rate", color="tab:orange")
    twin.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))


def _smoothed(loss: pd.Series) -> tuple[pd.Series, int]:
    """A centred moving mean over a 40th of the run (at least 5 batches) and its window; the
    ends average at least half a window, so the first and last points are not single batches."""
    window = max(5, len(loss) // 40)
    return loss.rolling(window, center=True, min_periods=window // 2).mean(), window


DRAW = {"loss": _loss, "mae": _mae, "lr": _lr, "gap": _gap, "stability": _stability, "time": _time,
        "batch_loss_distribution": _distribution, "loss_and_lr": _loss_and_lr}
