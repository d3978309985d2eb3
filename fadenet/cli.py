"""Command line: ``python -m fadenet <command> [options] [key=value ...]``.

Every command takes ``--profile`` and ``key=value`` config overrides (see fadenet/config.py).
Errors that a user can fix (bad config value, missing dataset, changed split, wrong
checkpoint) are printed as one line and exit with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["smoke", "quick", "paper"], default=None,
                   help="named profile (default: $FADENET_PROFILE, else quick)")
    p.add_argument("--config", type=Path, default=None, help="YAML file of overrides")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")


def _config(args):
    return load_config(args.profile, *args.overrides, file=args.config)


def cmd_prepare(args) -> None:
    from .data import load_split, prepare
    cfg = _config(args)
    faces = prepare(cfg)
    split = load_split(faces, cfg)
    m = faces.meta
    print(f"{faces.source}: {len(faces):,} images at {faces.size}px in {faces.folder} "
          f"({len(faces.skipped)} skipped; built in {m['seconds']:.1f} s, {m['images_per_second']:.0f} images/s)")
    print(f"split {split.protocol}: train {len(split.train):,} / val {len(split.val):,} / "
          f"test {len(split.test):,} ({split.path})")


def cmd_download(args) -> None:
    from .data.download import download_afad
    cfg = _config(args)
    folder = download_afad(cfg.data_root, variant="lite" if args.lite else "full")
    print(f"AFAD ready in {folder}")


def cmd_reproduce(args) -> None:
    from .runner import reproduce
    run_dir = reproduce(args.profile, args.overrides, only=args.only, inplace=args.inplace)
    print(f"all notebooks ran; executed copies in {run_dir / 'notebooks'}")


def cmd_train(args) -> None:
    from .training import train
    run = train(_config(args))
    m = run.meta
    print(f"{m['run_id']}: best val MAE {m['best_val_mae']:.3f} (epoch {m['best_epoch']}), "
          f"test MAE {m['test_mae']:.3f}; {m['train_seconds'] / 60:.1f} min of training; "
          f"{m['arch']} on {m['backbone']} from {m['pretrained']} weights; {run.folder}")
    if m["init_warning"]:
        print(f"warning: {m['init_warning']}")


def cmd_bench(args) -> None:
    import torch
    from .data import load_split, prepare
    cfg = _config(args)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    faces = prepare(cfg)
    split = load_split(faces, cfg)
    if args.what == "data":
        from .data.report import loader_rate
        rate = loader_rate(faces, split.train, batch_size=args.batch)
        print(f"training input pipeline: {rate:,.0f} augmented images/s "
              f"({faces.source}, {faces.size}px, batch {args.batch}, {torch.get_num_threads()} torch threads)")
    elif args.what == "train":
        from .training.trainer import training_throughput
        r = training_throughput(cfg, faces, split, steps=args.steps)
        print(f"training throughput, {r['backbone']}, {r['size']}px, batch {r['batch_size']}, "
              f"{r['threads']} threads: real loop {r['loop']:.1f} images/s, bare forward/backward/step "
              f"{r['bare']:.1f} images/s, ratio {r['ratio']:.1%}")


def cmd_summary(args) -> None:
    from .model import build_model, format_summary, resolve_backbone
    cfg = _config(args)
    cfg.model.pretrained = "none"  # the summary is about shapes and sizes, not weights
    if cfg.model.backbone == "auto":
        cfg.model.backbone = "mobilenet_v3_large"
    print(format_summary(build_model(cfg.model), size=args.size))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fadenet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="preprocess the dataset into the cache and make its split")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("download", help="download AFAD (needs a network)")
    p.add_argument("dataset", choices=["afad"])
    p.add_argument("--lite", action="store_true", help="AFAD-Lite instead of AFAD-Full")
    _add_config_args(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("reproduce", help="run every notebook in order with papermill")
    p.add_argument("--only", nargs="+", default=None, help="notebook numbers or names, e.g. 01 03")
    p.add_argument("--inplace", action="store_true",
                   help="also write executed notebooks back into notebooks/ (refreshes committed outputs)")
    p.add_argument("--profile", choices=["smoke", "quick", "paper"], default=None)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("train", help="train the configured model (resumes an interrupted run)")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="print throughput figures")
    p.add_argument("what", choices=["data", "train"])
    p.add_argument("--batch", type=int, default=64, help="batch size of the data benchmark")
    p.add_argument("--steps", type=int, default=20, help="timed steps of the training benchmark")
    _add_config_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("summary", help="parameter table by part and multiply-adds")
    p.add_argument("--size", type=int, default=224)
    _add_config_args(p)
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data.sources import DatasetError
    from .data.splits import SplitError
    from .runner import NotebookFailed
    from .training import CheckpointError, TrainingDiverged
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ConfigError, DatasetError, SplitError, NotebookFailed, CheckpointError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
