"""The named variants of FADE-Net: the paper's configuration, the additive ablation (one idea at a
time on the plain baseline), leave-one-out (the paper's network without one idea) and other
backbones, each with what it is and the row it is compared with; and chapter 02's tables of them
(what each costs). An experiment's definitions, so above the model layer: a variant is a set of
config switches, the model and loss only read them.

A variant sets all four switches (coordinate attention, multi-scale fusion, SPP, DLDL-v2), so
that applying it to any configuration gives the same network and loss whatever that
configuration had switched on before. The ablation and leave-one-out variants leave the backbone
to the configuration (MobileNetV3-Large in the paper profile; the ImageNet backbone that loads in
the CPU profiles), so that one grid answers the paper's question on whichever backbone learns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torchvision

from .config import Config, load_config
from .model import AgeNet, build_model, count_macs, count_parameters
from .model.backbones import backbone

SWITCHES = ("model.ca", "model.msff", "model.spp", "loss.dldl_v2")
ABLATION, LEAVE_ONE_OUT, OTHER = "additive ablation", "leave one out", "other backbones"
GROUPS = (ABLATION, LEAVE_ONE_OUT, OTHER)
OTHER_BACKBONES = ("mobilenet_v3_small", "mobilenet_v2", "resnet18")  # compared as plain baselines
VANILLA = "torchvision mobilenet_v3_large"  # the ImageNet classifier itself: a reference row, not an age model

_ALL = {key: True for key in SWITCHES}
_NONE = {key: False for key in SWITCHES}
_IDEAS = {"ca": "coordinate attention (last 4 attention blocks)", "msff": "texture/semantic fusion",
          "spp": "the SPP bottleneck", "dldl_v2": "the DLDL-v2 loss (plain DLDL otherwise)"}


@dataclass(frozen=True)
class Variant:
    name: str
    group: str
    settings: dict[str, Any]      # the config keys it sets
    description: str
    reference: str | None = None  # the variant its effect is measured against (paired by seed)


def _registry() -> dict[str, Variant]:
    out = [Variant("baseline", ABLATION, {"model.arch": "fadenet", **_NONE},
                   "backbone features + GAP + head, plain DLDL")]
    for idea, text in _IDEAS.items():
        key = next(k for k in SWITCHES if k.endswith(idea))
        out.append(Variant(f"+{idea}", ABLATION, {"model.arch": "fadenet", **_NONE, key: True},
                           f"baseline + {text}", "baseline"))
    out.append(Variant("fadenet", ABLATION, {"model.arch": "fadenet", **_ALL},
                       "FADE-Net as in the paper: all four ideas", "baseline"))
    for idea, text in _IDEAS.items():
        key = next(k for k in SWITCHES if k.endswith(idea))
        out.append(Variant(f"-{idea}", LEAVE_ONE_OUT, {"model.arch": "fadenet", **_ALL, key: False},
                           f"FADE-Net without {text}", "fadenet"))
    for other in OTHER_BACKBONES:
        out.append(Variant(other, OTHER, {**_ALL, "model.arch": "baseline", "model.backbone": other},
                           f"{backbone(other).title} features + GAP + head"))
    return {v.name: v for v in out}


VARIANTS: dict[str, Variant] = _registry()


def names(*groups: str) -> list[str]:
    """The variants of ``groups`` (default: all), in registry order."""
    return [n for n, v in VARIANTS.items() if not groups or v.group in groups]


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise KeyError(f"no variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def variant_config(name: str, cfg: Config | None = None) -> Config:
    """``cfg`` (default: the paper profile) with the variant's settings."""
    return (cfg.replaced if cfg is not None else load_config("paper").override)(variant(name).settings)


def build_variant(name: str, cfg: Config | None = None) -> AgeNet:
    """The network of a named variant on ``cfg``'s backbone (default as in :func:`variant_config`),
    from random weights: sizes and costs do not depend on them."""
    return build_model(variant_config(name, cfg).model)


def overrides_text(name: str) -> str:
    """The keys in which a variant differs from the paper profile, as ``key=value`` words."""
    paper = load_config("paper")
    changed = [f"{key}={_word(value)}" for key, value in variant(name).settings.items()
               if _value(paper, key) != value]
    return " ".join(changed) or "(none: the paper configuration)"


def _value(cfg: Config, key: str) -> Any:
    section, _, field = key.partition(".")
    return getattr(getattr(cfg, section), field)


def _word(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def variant_table(size: int = 224) -> pd.DataFrame:
    """One row per variant: what it is, the overrides that give it, its loss, its parameters
    and its multiply-adds for one ``size`` x ``size`` image."""
    macs = f"M multiply-adds @{size}px"
    rows = []
    for name, v in VARIANTS.items():
        cfg = variant_config(name)
        model = build_model(cfg.model)
        rows.append({"group": v.group, "variant": name, "description": v.description,
                     "overrides": overrides_text(name), "loss": "DLDL-v2" if cfg.loss.dldl_v2 else "plain DLDL",
                     "parameters": count_parameters(model), macs: round(count_macs(model, size) / 1e6, 1)})
    vanilla = torchvision.models.mobilenet_v3_large()
    rows.append({"group": "reference", "variant": VANILLA,
                 "description": "the 1000-class ImageNet classifier, for reference",
                 "overrides": "(not an age model)", "loss": "ImageNet cross-entropy",
                 "parameters": count_parameters(vanilla), macs: round(count_macs(vanilla, size) / 1e6, 1)})
    return pd.DataFrame(rows)


def baseline_representations() -> dict[str, int]:
    """Parameters of the ablation baseline written both ways the configuration allows."""
    as_switches = build_variant("baseline")
    as_arch = build_model(load_config("paper", {"model.arch": "baseline"}).model)
    return {"arch=fadenet, ca=msff=spp=false": count_parameters(as_switches), "arch=baseline": count_parameters(as_arch)}


def macs_comparison(size: int = 224) -> pd.DataFrame:
    """FADE-Net against the plain MobileNetV3-Large classifier and the predecessor HAL-Net:
    what is measured here, and, kept apart, what each source reports (one row per source)."""
    fadenet = build_variant("fadenet")
    vanilla = torchvision.models.mobilenet_v3_large()
    meta = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V2.meta
    classifier = "MobileNetV3-Large, the 1000-class ImageNet classifier"
    rows = [
        ("FADE-Net (paper configuration)", count_parameters(fadenet), count_macs(fadenet, size),
         "4.84M", "not stated", "FADE-Net README"),
        (classifier, count_parameters(vanilla), count_macs(vanilla, size),
         "5.48M", "not stated", "FADE-Net README ('vanilla MobileNetV3-Large')"),
        (classifier, None, None, "5.4M", "219M MAdds", "MobileNetV3 paper (Howard et al., 2019), Table 3"),
        (classifier, None, None, f"{meta['num_params']:,}", f"{meta['_ops']} 'GFLOPS'",
         "torchvision's weights metadata (IMAGENET1K_V2)"),
        ("HAL-Net (FADE-Net's predecessor)", None, None, "~5.4M", "~219M 'FLOPs'", "HAL-Net README"),
    ]
    macs = f"M multiply-adds @{size}px, measured here"
    table = pd.DataFrame(rows, columns=["model", "parameters, measured here", macs,
                                        "parameters, reported", "cost @224px, reported", "reported in"])
    table["parameters, measured here"] = table["parameters, measured here"].astype("Int64")
    table[macs] = (table[macs] / 1e6).round(1)
    return table
