"""One typed configuration that reaches every stage of the workbook.

A run is described by a :class:`Config`: a named profile (``smoke``, ``quick``, ``paper``)
sets the defaults, an optional YAML file and ``key=value`` overrides change them, and the
resolved result is saved next to the run's results. Keys are written ``section.field``
(``train.epochs=3``) or, where the field name is unique, just ``field`` (``epochs=3``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The project folder when the package is installed in development mode (the supported way);
# FADENET_HOME moves it, e.g. for an installed package used from another folder.
ROOT = Path(os.environ.get("FADENET_HOME") or Path(__file__).resolve().parents[1])

SOURCES = ("auto", "afad", "afad_lite", "aaf", "utkface", "synthetic")
SPLITS = ("80-10-10", "90-5-5", "72-8-20", "official", "kfold")
BACKBONES = ("auto", "mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v2", "resnet18")
ARCHS = ("fadenet", "baseline")
PRETRAINED = ("auto", "imagenet", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE = ("auto", "true", "false")
TTA_MODES = ("none", "flip", "multi")
CROPS = ("auto", "face", "none")


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names it."""


@dataclass
class DataConfig:
    source: str = "auto"          # which dataset; auto = AFAD, then AAF, then UTKFace, else synthetic
    root: str = ""                # folder holding the datasets; "" = $FADENET_DATA_ROOT or ./data
    size: int = 128               # square input size in pixels
    crop: str = "auto"            # auto = the source's own framing; face = tight face crop; none
    split: str = "80-10-10"       # split protocol
    fold: int = 0                 # kfold rotation, 0..4
    subset: int = 0               # 0 = every image; N = a fixed age-stratified subset of N images
    synthetic_count: int = 2000   # images in the synthetic set
    seed: int = 42                # seed of splits and subsets (not of training)
    cache_dir: str = "data/cache"  # preprocessing cache, relative to the project folder
    workers: int = 2              # processes that decode images during preprocessing


@dataclass
class ModelConfig:
    arch: str = "fadenet"         # fadenet, or baseline = backbone + global average pooling + head
    backbone: str = "mobilenet_v3_large"
    pretrained: str = "auto"      # imagenet (must load) | none | auto (load if possible)
    ca: bool = True               # coordinate attention in the last 4 attention blocks
    msff: bool = True             # multi-scale (texture + semantic) feature fusion
    spp: bool = True              # spatial pyramid pooling bottleneck
    fast_spp: bool = True         # cascaded 5x5 max-pools (SPPF), exactly equal to the parallel form
    hidden: int = 1024
    dropout: float = 0.35
    num_classes: int = 81         # ages 0..num_classes-1


@dataclass
class LossConfig:
    dldl_v2: bool = True          # False = plain DLDL: fixed sigma, KL + L1 only
    sigma_min: float = 1.0        # label sigma at age 0
    sigma_max: float = 3.0        # label sigma at the oldest age
    sigma_jitter: float = 0.2     # uniform +- jitter of sigma per training sample
    plain_sigma: float = 2.0      # sigma of plain DLDL
    l1_weight: float = 0.1
    rank_weight: float = 0.3
    mv_weight: float = 0.0        # mean-variance loss, off by default
    lds: bool = True              # label-distribution-smoothing re-weighting of KL and L1
    lds_sigma: float = 4.0
    lds_clip: float = 10.0


@dataclass
class TrainConfig:
    epochs: int = 120
    batch_size: int = 128
    fraction: float = 1.0         # share of the training split used (age-stratified); the ablation budget
    lr: float = 3e-4
    weight_decay: float = 4e-4
    min_lr_ratio: float = 0.01    # cosine decay ends at lr * min_lr_ratio
    warmup_epochs: float = 0.0    # linear warm-up before the cosine decay
    freeze_epochs: int = 5        # backbone frozen (ignored when it starts from random weights)
    backbone_lr_scale: float = 1.0  # lr of the ImageNet backbone layers as a share of lr (new layers get lr)
    augment: bool = True
    erase_p: float = 0.1          # safe random erasing probability
    mixup_alpha: float = 0.5
    mixup_prob: float = 0.5       # share of batches that are mixed
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    precision: str = "auto"       # fp32 | bf16 | fp16 (CUDA) | auto: bf16 where the device computes it natively, else fp32
    compile: str = "auto"         # true | false | auto: torch.compile on CUDA only (measured slower on CPU, fadenet bench train)
    processes: int = 0            # data-parallel processes on this machine; 0 = auto = 1 (torchrun sets its own)
    fused_adamw: bool = True      # AdamW's fused kernel: the same update in one pass over the parameters
    seed: int = 42
    device: str = "auto"          # auto | cpu | cuda
    threads: int = 0              # torch CPU threads; 0 = torch's default
    channels_last: bool = True    # NHWC memory layout: same numbers, ~35% faster training on CPU
    max_minutes: float = 0.0      # stop after this many minutes of training (0 = no limit)


@dataclass
class EvalConfig:
    tta: str = "none"             # none | flip | multi
    scales: tuple[float, ...] = (0.9, 1.0, 1.1)
    seeds: tuple[int, ...] = (42, 1337)
    ablation_budget: float = 1.0  # share of the training split each ablation run learns from
    bench_repeats: int = 50       # speed benchmark (notebook 07): timed calls of each network, back-end and batch
    bench_seconds: float = 120.0  # ... its timed rounds stop early once this much time per batch size is spent
    bench_size: int = 224         # ... input size in pixels (the paper's)
    bench_batches: tuple[int, ...] = (1, 32)
    bench_threads: int = 2        # ... CPU threads of every back-end (torch and ONNX Runtime)
    bench_models: str = "all"     # ... comma-separated names of fadenet.deploy.speed.bench_models(), or all
    bench_compile_seconds: float = 600.0  # ... torch.compile is tried until this much compiling is spent; 0 = never


@dataclass
class Config:
    profile: str = "quick"
    runs_dir: str = "runs"
    figures_dir: str = "figures"  # where notebooks save figures and tables
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # ---- derived values -------------------------------------------------------------
    def path(self, value: str) -> Path:
        """A configured path, relative ones taken from the project folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else ROOT / p

    @property
    def data_root(self) -> Path:
        return self.path(self.data.root or os.environ.get("FADENET_DATA_ROOT") or "data")

    @property
    def cache_dir(self) -> Path:
        return self.path(self.data.cache_dir)

    @property
    def runs_path(self) -> Path:
        return self.path(self.runs_dir)

    @property
    def figures_path(self) -> Path:
        return self.path(self.figures_dir)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def run_id(self) -> str:
        """A name that identifies a training run by everything that affects its result."""
        d = self.to_dict()
        d.pop("runs_dir")
        d.pop("figures_dir")
        d.pop("profile")
        d["eval"] = None
        d["data"].pop("workers")
        d["data"].pop("cache_dir")
        d["train"].pop("device")
        d["train"].pop("threads")
        for key in ("channels_last", "compile", "processes", "fused_adamw"):  # same maths, another speed
            d["train"].pop(key)
        digest = hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]
        m = self.model
        return f"{self.profile}-{m.arch}-{m.backbone}-s{self.train.seed}-{digest}"

    def override(self, *items: str | dict[str, Any]) -> "Config":
        """Apply ``key=value`` strings or {key: value} dicts in place and return self."""
        for item in items:
            pairs = item.items() if isinstance(item, dict) else [_split_pair(item)]
            for key, value in pairs:
                section, name = _resolve_key(self, key)
                target = getattr(self, section) if section else self
                current = getattr(target, name)
                setattr(target, name, _coerce(key, value, current))
        self.validate()
        return self

    def validate(self) -> None:
        self.train.compile = str(self.train.compile).lower()  # YAML reads `compile: true` as a bool
        checks = [
            ("data.source", self.data.source, SOURCES), ("data.split", self.data.split, SPLITS),
            ("data.crop", self.data.crop, CROPS), ("model.backbone", self.model.backbone, BACKBONES),
            ("model.arch", self.model.arch, ARCHS), ("model.pretrained", self.model.pretrained, PRETRAINED),
            ("eval.tta", self.eval.tta, TTA_MODES), ("profile", self.profile, tuple(PROFILES)),
            ("train.precision", self.train.precision, PRECISIONS), ("train.compile", self.train.compile, COMPILE),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
        # (key, value, lowest, highest allowed); None = unbounded
        ranges = [
            ("data.size", self.data.size, 32, 512), ("data.fold", self.data.fold, 0, 4),
            ("data.subset", self.data.subset, 0, None), ("data.synthetic_count", self.data.synthetic_count, 10, None),
            ("data.workers", self.data.workers, 0, None), ("model.num_classes", self.model.num_classes, 2, None),
            ("model.hidden", self.model.hidden, 1, None), ("model.dropout", self.model.dropout, 0.0, 0.99),
            ("train.epochs", self.train.epochs, 0, None), ("train.batch_size", self.train.batch_size, 1, None),
            ("train.fraction", self.train.fraction, 1e-3, 1.0),
            ("train.lr", self.train.lr, 1e-12, None), ("train.weight_decay", self.train.weight_decay, 0.0, None),
            ("train.min_lr_ratio", self.train.min_lr_ratio, 0.0, 1.0),
            ("train.warmup_epochs", self.train.warmup_epochs, 0.0, None),
            ("train.freeze_epochs", self.train.freeze_epochs, 0, None), ("train.erase_p", self.train.erase_p, 0.0, 1.0),
            ("train.backbone_lr_scale", self.train.backbone_lr_scale, 0.0, None),
            ("train.mixup_alpha", self.train.mixup_alpha, 0.0, None), ("train.mixup_prob", self.train.mixup_prob, 0.0, 1.0),
            ("train.ema_decay", self.train.ema_decay, 0.0, 1.0), ("train.grad_clip", self.train.grad_clip, 0.0, None),
            ("train.threads", self.train.threads, 0, None), ("train.processes", self.train.processes, 0, None), ("train.max_minutes", self.train.max_minutes, 0.0, None),
            ("loss.sigma_min", self.loss.sigma_min, 1e-3, None), ("loss.sigma_max", self.loss.sigma_max, 1e-3, None),
            ("loss.plain_sigma", self.loss.plain_sigma, 1e-3, None), ("loss.lds_sigma", self.loss.lds_sigma, 1e-3, None),
            ("loss.lds_clip", self.loss.lds_clip, 1.0, None),
            ("eval.ablation_budget", self.eval.ablation_budget, 1e-3, None),
            ("eval.bench_repeats", self.eval.bench_repeats, 1, None),
            ("eval.bench_seconds", self.eval.bench_seconds, 0.0, None),
            ("eval.bench_size", self.eval.bench_size, 32, 512),
            ("eval.bench_batches", min(self.eval.bench_batches, default=0), 1, None),
            ("eval.bench_threads", self.eval.bench_threads, 1, None),
            ("eval.bench_compile_seconds", self.eval.bench_compile_seconds, 0.0, None),
        ]
        for key, value, low, high in ranges:
            if not (math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)):
                bounds = f"at least {low}" if high is None else f"between {low} and {high}"
                raise ConfigError(f"{key}={value} must be {bounds}")
        if self.train.device not in ("auto", "cpu", "cuda") and not self.train.device.startswith("cuda:"):
            raise ConfigError(f"train.device={self.train.device!r} is not one of auto, cpu, cuda, cuda:N")

    def save(self, path: Path) -> None:
        from .io import atomic_write_text
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# Each profile is a set of overrides of the defaults above (which are the paper's recipe).
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"data.source": "afad", "data.size": 224, "model.backbone": "mobilenet_v3_large",
              "model.pretrained": "imagenet", "eval.tta": "multi"},
    # quick compresses the recipe for a CPU: 10 epochs at 160 px, 39 min of training on 2 AVX2
    # cores (it was sized at 8 epochs of 128 px, ~15 min on a CPU that trains at ~100 images/s).
    # Measured on AAF (FADE-Net on ImageNet MobileNetV2, 80-10-10, validation MAE): at 5 epochs,
    # batch 64 with a frozen first epoch 5.74, batch 32 without one 5.58; at batch 32, lr 3e-4 to
    # 1e-3 all ended near 5.5, while 2e-3 and 3e-3 fell behind from the first epoch. Freezing pays
    # over the paper's 120 epochs, not over 5. With EMA decay 0.999 the EMA still averaged in the
    # weights of early epochs (raw weights 0.08 better after 5 epochs); 0.995 fixed that. The
    # whole-image framing (data.crop=none) was worse (5.68 after 5 epochs), and so was lr 2e-3 for
    # the new layers with train.backbone_lr_scale=0.25. Mixup and LDS regularise a long run; in 8
    # epochs they held it back (5.29 with them; 5.09 to 4.97 without, by thread count). At 8
    # epochs 160 px reached 5.02 (test 4.79) in about the time of 128 px, 192 px 5.08 (test 4.76)
    # in 1.35x the time.
    "quick": {"data.source": "auto", "data.size": 160, "data.split": "80-10-10",
              "model.backbone": "auto", "model.pretrained": "auto", "loss.lds": False, "train.mixup_prob": 0.0,
              "train.epochs": 10, "train.batch_size": 32, "train.lr": 5e-4, "train.freeze_epochs": 0,
              "train.warmup_epochs": 0.3, "train.ema_decay": 0.995, "eval.tta": "flip", "eval.ablation_budget": 0.1,
              "eval.bench_repeats": 20, "eval.bench_seconds": 60.0, "eval.bench_compile_seconds": 240.0},
    # smoke runs in tests and nbval: its figures must not overwrite the reference run's; one
    # process, since starting workers costs more than they save on 300 tiny faces
    "smoke": {"train.processes": 1, "figures_dir": "runs/smoke/figures", "data.source": "auto", "data.size": 64, "data.subset": 300,
              "model.backbone": "mobilenet_v3_large", "model.pretrained": "none",
              "train.epochs": 1, "train.batch_size": 32, "train.lr": 1e-3, "train.freeze_epochs": 0,
              "eval.tta": "flip", "eval.ablation_budget": 0.02, "eval.bench_repeats": 3,
              "eval.bench_size": 64, "eval.bench_batches": (1, 2), "eval.bench_models": "fadenet",
              "eval.bench_seconds": 2.0, "eval.bench_compile_seconds": 0.0,
              "eval.seeds": (42, 1337)},
}


def load_config(profile: str | None = None, *overrides: str | dict[str, Any],
                file: str | Path | None = None) -> Config:
    """The resolved configuration: profile (or $FADENET_PROFILE, else quick), then a YAML
    file of overrides, then ``key=value`` overrides, in that order."""
    profile = profile or os.environ.get("FADENET_PROFILE") or "quick"
    if profile not in PROFILES:
        raise ConfigError(f"profile={profile!r} is not one of {', '.join(PROFILES)}")
    cfg = Config(profile=profile).override(PROFILES[profile])
    if file:
        cfg.override(_flatten(_read_yaml(Path(file))))
    return cfg.override(*overrides)


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (e.g. stored in a checkpoint)."""
    d = dict(d)
    cfg = Config(profile=d.pop("profile", "quick"))
    flat = {k: v for k, v in _flatten(d).items() if k not in RETIRED_KEYS}
    return cfg.override(flat)


# Keys of older versions, ignored when a saved config is read: train.amp (mixed precision on CUDA)
# became train.precision.
RETIRED_KEYS = {"train.amp"}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _split_pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=3)")
    return key.strip(), value.strip()


def _sections() -> dict[str, type]:
    return {f.name: f.type for f in dataclasses.fields(Config) if f.name in
            ("data", "model", "loss", "train", "eval")}


def _resolve_key(cfg: Config, key: str) -> tuple[str, str]:
    """(section, field) for a dotted or bare key; bare keys must be unambiguous."""
    top = {f.name for f in dataclasses.fields(Config)} - set(_sections())
    if key in top:
        return "", key
    if "." in key:
        section, _, name = key.partition(".")
        if section in _sections() and name in {f.name for f in dataclasses.fields(getattr(cfg, section))}:
            return section, name
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(all_keys())}")
    owners = [s for s in _sections() if key in {f.name for f in dataclasses.fields(getattr(cfg, s))}]
    if len(owners) == 1:
        return owners[0], key
    if owners:
        raise ConfigError(f"config key {key!r} is ambiguous; write one of "
                          + ", ".join(f"{s}.{key}" for s in owners))
    raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(all_keys())}")


def all_keys() -> list[str]:
    cfg = Config()
    keys = [f.name for f in dataclasses.fields(Config) if f.name not in _sections()]
    for s in _sections():
        keys += [f"{s}.{f.name}" for f in dataclasses.fields(getattr(cfg, s))]
    return keys


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Convert ``value`` to the type of the field's current value, or raise naming the key."""
    try:
        if isinstance(current, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(current, tuple):
            items = value if isinstance(value, (list, tuple)) else \
                [v for v in str(value).strip("()[] ").split(",") if v.strip()]
            kind = type(current[0]) if current else float
            return tuple(kind(v) for v in items)
        if isinstance(current, int):
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if isinstance(current, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind = "true/false" if isinstance(current, bool) else type(current).__name__
        raise ConfigError(f"{key}={value!r} is not a valid {kind}") from None
