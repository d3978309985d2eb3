"""One typed configuration that reaches every stage of the workbook.

A run is described by a :class:`Config`: a named profile (a recipe file ``configs/<name>.yaml``:
``smoke``, ``quick``, ``reference``, ``paper``) sets the defaults, an optional YAML file and
``key=value`` overrides change them, and the resolved result is saved next to the run's results.
Keys are written ``section.field`` (``train.epochs=3``) or, where the field name is unique, just
``field`` (``epochs=3``). The defaults below are the paper's recipe.

Fields made with :func:`not_result` change how fast or where a run goes, not what it learns;
everything else is part of a training run's identity (:meth:`Config.run_id`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io import shown_path

# The project folder when the package is installed in development mode (the supported way);
# FADENET_HOME moves it, e.g. for an installed package used from another folder.
ROOT = Path(os.environ.get("FADENET_HOME") or Path(__file__).resolve().parents[1])

DETECTORS = ("auto", "mtcnn", "haar")  # face detectors of the photo path (fadenet.data.detect)
SOURCES = ("auto", "afad", "afad_lite", "aaf", "utkface", "synthetic", "csv", "folder")
# split protocols (fadenet.data.splits): train/val/test percentages of the age-stratified ones,
# then AAF's own lists and the unified benchmark's 10 folds
RATIO_SPLITS = {"80-10-10": (80, 10, 10), "90-5-5": (90, 5, 5), "72-8-20": (72, 8, 20)}
SPLITS = (*RATIO_SPLITS, "official", "kfold")
ARCHS = ("fadenet", "baseline")
PRETRAINED = ("auto", "imagenet", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE = ("auto", "true", "false")
TTA_MODES = ("none", "flip", "multi")
CROPS = ("auto", "aligned", "face", "none")
PHOTO_MODELS = ("shipped", "trained")
SCHEDULES = ("cosine", "linear")
EVAL_PARTS = ("test", "val", "train", "all")  # what `evaluate` predicts: a part of the split, or every face


CONFIGS = ROOT / "configs"


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names it."""


def not_result(default: Any):
    """A field that does not change a training run's result (left out of its identity)."""
    return field(default=default, metadata={"result": False})


def added(default: Any):
    """A field added after runs were made: left out of a run's identity while it holds
    ``default``, the value that behaves as the code did before the field existed, so that adding
    it leaves every earlier run id (and a run part-way through training) as it was."""
    return field(default=default, metadata={"omit_if": default})


@dataclass
class DataConfig:
    source: str = "auto"          # which dataset; auto = AFAD, then AAF, then UTKFace, else synthetic
    root: str = ""                # folder holding the datasets; "" = $FADENET_DATA_ROOT or ./data
    csv: str = ""                 # source csv: a CSV of path,age[,subject,gender] (paths relative to it)
    folder: str = ""              # source folder: <folder>/<age>/<image>
    size: int = 128               # square input size in pixels
    crop: str = "auto"            # auto: aligned for AAF, the source's own framing (none) elsewhere;
                                  # aligned = eye-landmark alignment; face = a fixed or detected box; none
    split: str = "80-10-10"       # split protocol
    fold: int = 0                 # kfold rotation, 0..4
    subset: int = 0               # 0 = every image; N = a fixed age-stratified subset of N images
    synthetic_count: int = 2000   # images in the synthetic set
    seed: int = 42                # seed of splits and subsets (not of training)
    cache_dir: str = not_result("data/cache")  # preprocessing cache, relative to the project folder
    workers: int = not_result(2)  # processes that decode images during preprocessing


@dataclass
class ModelConfig:
    arch: str = "fadenet"         # fadenet, or baseline = backbone + global average pooling + head
    backbone: str = "mobilenet_v3_large"  # auto or a name of fadenet.model.backbones (checked when resolved)
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
    min_lr_ratio: float = 0.01    # the decay ends at lr * min_lr_ratio
    warmup_epochs: float = 0.0    # linear warm-up before the decay
    schedule: str = added("cosine")  # decay after the warm-up: cosine | linear
    freeze_epochs: int = 5        # backbone frozen (ignored when it starts from random weights)
    backbone_lr_scale: float = 1.0  # lr of the ImageNet backbone layers as a share of lr (new layers get lr)
    augment: bool = True
    erase_p: float = 0.1          # safe random erasing probability
    aug_strength: float = added(1.0)  # scales the affine, colour-jitter and blur ranges (0: flips only)
    sizes: tuple[int, ...] = added(())  # progressive resizing: training sizes in equal stages of the
                                  # epochs, each <= data.size (validation and test stay at data.size); () = data.size
    mixup_alpha: float = 0.5
    mixup_prob: float = 0.5       # share of batches that are mixed
    ema_decay: float = 0.999
    ema_warmup: bool = added(True)  # decay (1+n)/(10+n) while below ema_decay (n: steps averaged)
    grad_clip: float = 1.0
    precision: str = "auto"       # fp32 | bf16 | fp16 (CUDA) | auto: bf16 on GPUs and on CPUs with AMX, else fp32
    # the next six are the same maths up to the order of sums (and BatchNorm statistics shared
    # across processes): another speed, not another result
    compile: str = not_result("auto")  # true | false | auto: torch.compile on CUDA only (slower on the CPUs measured)
    processes: int = not_result(0)  # data-parallel processes on this machine; 0 = auto = 1 (torchrun sets its own)
    fused_adamw: bool = not_result(True)  # AdamW's fused kernel: the same update in one pass over the parameters
    sync_bn: bool = not_result(False)  # several GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)
    threads: int = not_result(0)  # torch CPU threads; 0 = torch's default
    channels_last: bool = not_result(True)  # NHWC memory layout: same numbers, faster convolutions on CPU
    seed: int = 42
    device: str = not_result("auto")  # auto | cpu | cuda
    max_minutes: float = 0.0      # stop after this many minutes of training (0 = no limit)


@dataclass
class EvalConfig:
    """How chapters 04-08 evaluate trained runs (a training run's result does not depend on it)."""
    tta: str = not_result("none")  # none | flip | multi
    scales: tuple[float, ...] = not_result((0.9, 1.0, 1.1))
    seeds: tuple[int, ...] = not_result((42, 1337))
    ablation_budget: float = not_result(1.0)  # share of the training split each ablation run learns from
    factorial_seeds: tuple[int, ...] = not_result((42, 1337))  # chapter 04's 2^4 factorial: each cell once per seed
    # chapter 04's budget transfer: the baseline and FADE-Net with each seed, trained for each
    # multiple of train.epochs (the schedule stretched with it)
    transfer_seeds: tuple[int, ...] = not_result((42, 1337, 7))
    transfer_scales: tuple[int, ...] = not_result((1, 3))
    kfold: bool = not_result(True)  # chapter 05 also trains FADE-Net on the 5 kfold rotations
    # chapter 03's time-to-accuracy study: training compute in epoch-equivalents (one epoch of the
    # whole training split at 112 px; below 1, one epoch of that share of the split)
    recipes: tuple[str, ...] = not_result(("short_paper", "cpu_budget"))  # files under configs/recipes/
    budgets: tuple[float, ...] = not_result((2.0, 4.0, 8.0))
    budget_seeds: tuple[int, ...] = not_result((42, 1337))
    lever_budget: float = not_result(2.0)  # each lever of configs/recipes/levers.yaml, one seed; 0 = none
    # the model users get (chapter 08's photos and robustness, chapter 05's fairness table): the
    # package's pretrained one, or this profile's chapter 03 run
    photo_model: str = not_result("shipped")  # shipped | trained


@dataclass
class BenchConfig:
    """The benchmarks: inference speed (chapter 07, ``fadenet bench speed``) and the photo path
    (chapter 08, ``fadenet bench faces``)."""
    repeats: int = not_result(50)  # timed calls of each network, back-end and batch
    seconds: float = not_result(120.0)  # timed rounds stop early once this much time per batch size is spent
    size: int = not_result(224)   # input size in pixels (the paper's)
    batches: tuple[int, ...] = not_result((1, 32))
    threads: int = not_result(2)  # CPU threads of every back-end (torch and ONNX Runtime)
    models: str = not_result("all")  # comma-separated names of fadenet.deploy.speed.bench_models(), or all
    compile_seconds: float = not_result(600.0)  # torch.compile is tried until this much compiling is spent; 0 = never
    faces: int = not_result(300)  # test faces the photo-path benchmark pastes into pictures


@dataclass
class Config:
    profile: str = not_result("quick")  # named in the run id itself
    runs_dir: str = not_result("runs")
    figures_dir: str = not_result("figures")  # where notebooks save figures and tables
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    # ---- derived values -------------------------------------------------------------
    def path(self, value: str) -> Path:
        """A configured path, relative ones taken from the project folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else ROOT / p

    @property
    def data_root(self) -> Path:
        return self.path(self.data.root or os.environ.get("FADENET_DATA_ROOT") or "data")

    def shown(self, path: str | Path) -> str:
        """``path`` relative to the project folder, or to the data root (named by the key or
        variable that set it), for printed output."""
        root_label = "$FADENET_DATA_ROOT" if not self.data.root and os.environ.get("FADENET_DATA_ROOT") else "<data.root>"
        return shown_path(path, [("", ROOT), (root_label, self.data_root)])

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

    def identity(self) -> dict[str, Any]:
        """The fields that change a training run's result (see :func:`not_result`), by section."""
        def kept(obj) -> dict[str, Any]:
            out = {}
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                if dataclasses.is_dataclass(value):
                    value = kept(value)
                    if value:
                        out[f.name] = value
                elif f.metadata.get("result", True) and not ("omit_if" in f.metadata and value == f.metadata["omit_if"]):
                    out[f.name] = value
            return out
        return json.loads(json.dumps(kept(self)))

    def run_id(self) -> str:
        """A name that identifies a training run by everything that affects its result."""
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        m = self.model
        return f"{self.profile}-{m.arch}-{m.backbone}-s{self.train.seed}-{digest}"

    def replaced(self, *items: str | dict[str, Any]) -> "Config":
        """A copy with :meth:`override` applied; ``self`` is left as it was (what a run derived from
        a profile's config needs)."""
        return copy.deepcopy(self).override(*items)

    def override(self, *items: str | dict[str, Any]) -> "Config":
        """Apply ``key=value`` strings or {key: value} dicts in place and return self."""
        for item in items:
            pairs = item.items() if isinstance(item, dict) else [_split_pair(item)]
            for key, value in pairs:
                section, name = _resolve_key(self, key)
                target = getattr(self, section) if section else self
                current = getattr(target, name)
                setattr(target, name, _coerce(key, value, current, _field_type(target, name)))
        self.validate()
        return self

    def validate(self) -> None:
        self.train.compile = str(self.train.compile).lower()  # YAML reads `compile: true` as a bool
        checks = [
            ("data.source", self.data.source, SOURCES), ("data.split", self.data.split, SPLITS),
            ("data.crop", self.data.crop, CROPS),
            ("model.arch", self.model.arch, ARCHS), ("model.pretrained", self.model.pretrained, PRETRAINED),
            ("eval.tta", self.eval.tta, TTA_MODES), ("profile", self.profile, tuple(profiles())),
            ("train.precision", self.train.precision, PRECISIONS), ("train.compile", self.train.compile, COMPILE),
            ("train.schedule", self.train.schedule, SCHEDULES),
            ("eval.photo_model", self.eval.photo_model, PHOTO_MODELS),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
        for source in ("csv", "folder"):
            if self.data.source == source and not getattr(self.data, source):
                raise ConfigError(f"data.source={source} needs data.{source}=<path> (e.g. data.{source}="
                                  + ("faces.csv)" if source == "csv" else "my_faces/, holding <age>/<image> files)"))
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
            ("train.aug_strength", self.train.aug_strength, 0.0, 3.0),
            ("train.sizes", min(self.train.sizes, default=32), 32, self.data.size),
            ("train.sizes", max(self.train.sizes, default=32), 32, self.data.size),
            ("train.threads", self.train.threads, 0, None), ("train.processes", self.train.processes, 0, None), ("train.max_minutes", self.train.max_minutes, 0.0, None),
            ("loss.sigma_min", self.loss.sigma_min, 1e-3, None), ("loss.sigma_max", self.loss.sigma_max, 1e-3, None),
            ("loss.plain_sigma", self.loss.plain_sigma, 1e-3, None), ("loss.lds_sigma", self.loss.lds_sigma, 1e-3, None),
            ("loss.lds_clip", self.loss.lds_clip, 1.0, None),
            ("eval.ablation_budget", self.eval.ablation_budget, 1e-3, None),
            ("eval.budgets", min(self.eval.budgets, default=1.0), 1e-3, None),
            ("eval.lever_budget", self.eval.lever_budget, 0.0, None),
            ("bench.repeats", self.bench.repeats, 1, None),
            ("bench.seconds", self.bench.seconds, 0.0, None),
            ("bench.size", self.bench.size, 32, 512),
            ("bench.batches", min(self.bench.batches, default=0), 1, None),
            ("bench.threads", self.bench.threads, 1, None),
            ("bench.compile_seconds", self.bench.compile_seconds, 0.0, None),
        ]
        for key, value, low, high in ranges:
            if not (math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)):
                bounds = f"at least {low}" if high is None else f"between {low} and {high}"
                raise ConfigError(f"{key}={value} must be {bounds}")
        if not self.eval.factorial_seeds or len(set(self.eval.factorial_seeds)) != len(self.eval.factorial_seeds):
            raise ConfigError(f"eval.factorial_seeds={list(self.eval.factorial_seeds)} must be distinct seeds, at least one")
        if len(set(self.eval.transfer_seeds)) < 2 or len(set(self.eval.transfer_seeds)) != len(self.eval.transfer_seeds):
            raise ConfigError(f"eval.transfer_seeds={list(self.eval.transfer_seeds)} must be distinct seeds, at least two")
        if not self.eval.transfer_scales or min(self.eval.transfer_scales) < 1:
            raise ConfigError(f"eval.transfer_scales={list(self.eval.transfer_scales)} must be whole multiples of "
                              "train.epochs, at least 1")
        if self.train.device not in ("auto", "cpu", "cuda") and not self.train.device.startswith("cuda:"):
            raise ConfigError(f"train.device={self.train.device!r} is not one of auto, cpu, cuda, cuda:N")

    def save(self, path: Path) -> None:
        from .io import atomic_write_text
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def profiles() -> list[str]:
    """The named recipes: one YAML file each under ``configs/``."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def load_config(profile: str | None = None, *overrides: str | dict[str, Any],
                file: str | Path | None = None) -> Config:
    """The resolved configuration: profile (or $FADENET_PROFILE, else quick), then a YAML
    file of overrides, then ``key=value`` overrides, in that order."""
    profile = profile or os.environ.get("FADENET_PROFILE") or "quick"
    if profile not in profiles():
        raise ConfigError(f"profile={profile!r} is not one of {', '.join(profiles())} (files under {CONFIGS})")
    cfg = Config(profile=profile).override(*_profile_layers(CONFIGS / f"{profile}.yaml"))
    if file:
        cfg.override(*_profile_layers(Path(file)))
    return cfg.override(*overrides)


def _profile_layers(path: Path) -> list[dict[str, Any]]:
    """A profile's (or a ``--config`` file's) overrides: the recipe file it names (``recipe:
    <name>``, from ``configs/recipes/``) first, then its own keys, so that a recipe is written in
    one place. A recipe file itself can be given: its ``title`` is for readers."""
    own = _read_yaml(path)
    own.pop("title", None)
    name = own.pop("recipe", None)
    return ([read_recipe(name)] if name else []) + [_flatten(own)]


RECIPES = CONFIGS / "recipes"


def read_recipe(name: str) -> dict[str, Any]:
    """The overrides of ``configs/recipes/<name>.yaml`` as flat ``section.key`` pairs (its
    ``title``, the recipe's name for readers, left out)."""
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml") if p.stem != "levers"))
        raise ConfigError(f"recipe {name!r} is not a file under {RECIPES} (there: {known})")
    keys = _flatten(_read_yaml(path))
    keys.pop("title", None)
    return keys


def read_levers() -> dict[str, dict[str, Any]]:
    """The levers of ``configs/recipes/levers.yaml``: name -> the keys it sets."""
    return {name: dict(keys) for name, keys in _read_yaml(RECIPES / "levers.yaml").items()}


def recipe_title(name: str) -> str:
    return str(_read_yaml(RECIPES / f"{name}.yaml").get("title", name))


def config_from_dict(d: dict[str, Any]) -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (e.g. stored in a checkpoint)."""
    d = dict(d)
    cfg = Config(profile=d.pop("profile", "quick"))
    flat = {k: v for k, v in _flatten(d).items() if k not in RETIRED_KEYS}
    return cfg.override(flat)


# Keys of older versions, ignored when a saved config is read: train.amp (mixed precision on CUDA)
# became train.precision; the speed benchmark's eval.bench_* became the bench section.
RETIRED_KEYS = {"train.amp", *(f"eval.bench_{k}" for k in ("repeats", "seconds", "size", "batches", "threads",
                                                             "models", "compile_seconds"))}


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
            ("data", "model", "loss", "train", "eval", "bench")}


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


def _field_type(target: Any, name: str) -> str:
    """The field's annotation as written (a string: this module defers annotations)."""
    return str(next(f.type for f in dataclasses.fields(target) if f.name == name))


def _coerce(key: str, value: Any, current: Any, annotation: str = "") -> Any:
    """Convert ``value`` to the type of the field's current value (a tuple's items to the type its
    annotation names), or raise naming the key."""
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
            kind = int if annotation.startswith("tuple[int") else type(current[0]) if current else float
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
