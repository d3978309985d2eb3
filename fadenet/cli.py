"""Command line: ``python -m fadenet <command> [options] [key=value ...]``.

Every command takes ``--profile`` and ``key=value`` config overrides (see fadenet/config.py).
Errors that a user can fix (bad config value, missing dataset, changed split, wrong
checkpoint) are printed as one line and exit with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import os
import logging
import sys
from pathlib import Path

from .config import DETECTORS, EVAL_PARTS, SOURCES, TTA_MODES, ConfigError, load_config, profiles

ENGINES = ("torch", "onnx")  # what runs the network in predict and bench faces
CHECKPOINT_HELP = "a trained checkpoint (best.pt); default: the model shipped in the package"


def _checkpoint(path: Path | None) -> Path:
    """The checkpoint a command was given, else the shipped model (its hash checked)."""
    if path is not None:
        return path
    from .shipped import shipped_checkpoint
    return shipped_checkpoint()


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=profiles(), default=None,
                   help="named profile, a recipe file configs/<name>.yaml (default: $FADENET_PROFILE, else quick)")
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


def cmd_factorial(args) -> None:
    from .data import load_split, prepare
    from .evaluation import factorial
    cfg = _config(args)
    faces = prepare(cfg)
    split = load_split(faces, cfg)
    runs = factorial.run_factorial(cfg, faces, split)
    transfer = factorial.run_transfer(cfg, faces, split)
    print(f"{len(runs)} factorial and {len(transfer)} budget-transfer runs stored in "
          f"{cfg.shown(factorial.store_path(cfg))}")


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
    if int(os.environ.get("RANK", "0")):  # under torchrun the first process speaks for all
        return
    m = run.meta
    print(f"{m['run_id']}: best val MAE {m['best_val_mae']:.3f} (epoch {m['best_epoch']}), "
          f"test MAE {m['test_mae']:.3f}; {m['train_seconds'] / 60:.1f} min of training; "
          f"{m['arch']} on {m['backbone']} from {m['pretrained']} weights; {run.folder}")
    if m["init_warning"]:
        print(f"warning: {m['init_warning']}")


def _bench_data(args):
    """The profile's config (with ``--threads`` applied), its faces and split, for a benchmark."""
    import torch
    from .data import load_split, prepare
    cfg = _config(args)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    faces = prepare(cfg)
    return cfg, faces, load_split(faces, cfg)


def cmd_bench_data(args) -> None:
    import pandas as pd
    import torch
    from .data.bench import loader_rate
    from .harness import machine_text, report
    from .runtime import pick_device
    cfg, faces, split = _bench_data(args)
    device = pick_device(cfg.train.device)
    rate = loader_rate(faces, split.train, batch_size=args.batch, device=device)
    table = pd.DataFrame([{"device": device.type, "batch": args.batch, "augmented images/s": round(rate, 1)}])
    report(table, "bench_data", cfg, f"{machine_text(torch.get_num_threads())}; training input pipeline, "
                                      f"{faces.source}, {faces.size}px, profile {cfg.profile}")


def cmd_bench_train(args) -> None:
    from .harness import machine_text, report
    from .resolve import resolve
    from .training.bench import device_modes, modes_frame, training_modes
    cfg, faces, split = _bench_data(args)
    table = modes_frame(training_modes(cfg, faces, split, device_modes(cfg, args.modes), steps=args.steps,
                                       rounds=args.rounds))
    report(table, "bench_train", cfg, f"{machine_text()}; {cfg.model.arch} on {resolve(cfg).backbone}, {faces.source}, "
                                      f"{cfg.data.size}px, global batch {cfg.train.batch_size}, profile {cfg.profile}; "
                                      f"{args.rounds} rounds of {args.steps} steps")


def cmd_bench_faces(args) -> None:
    from .data.detect import available
    from .explore import AgePredictor
    from .explore.bench import bench_faces, spread
    from .harness import machine_text, report
    from .training import load_model
    from .training.checkpoint import trained_faces
    args.checkpoint = _checkpoint(args.checkpoint)
    model, trained_cfg, state = load_model(args.checkpoint)
    predictor = AgePredictor.for_model(model, trained_cfg, args.checkpoint, engine=args.engine)
    faces, split = trained_faces(trained_cfg, state)
    cfg = _config(args)
    rows = spread(split.test, args.count or cfg.bench.faces)
    detectors = [d for d in args.detectors if d == "haar" or available(d)]
    table = bench_faces(predictor, faces, rows, detectors)
    report(table, "bench_faces", cfg,
           f"{machine_text()}; {len(rows)} test faces of {faces.source} ({args.checkpoint.parent.name}, "
           f"{faces.size}px), TTA none, network in {args.engine}; python -m fadenet bench faces")
    missing = sorted(set(args.detectors) - set(detectors))
    if missing:
        print(f"not measured (not installed): {', '.join(missing)}")


def cmd_bench_speed(args) -> None:
    from .data import load_split, prepare
    from .deploy import speed_table
    from .deploy.report import save_speed_tables, targets, throughput_table
    from .figures import markdown_table, provenance
    from .harness import machine_text
    chosen = {"bench.models": ",".join(args.models or []), "bench.batches": args.batch,
              "bench.threads": args.threads, "bench.size": args.size}
    cfg = _config(args).replaced({key: value for key, value in chosen.items() if value})
    faces = prepare(cfg)
    table = speed_table(cfg, faces, load_split(faces, cfg), backends=args.backends)
    caption = (f"{machine_text(cfg.bench.threads)}; {cfg.bench.size}x{cfg.bench.size} input; inputs and INT8 "
               f"calibration: {provenance(cfg, faces.source, len(faces))}")
    path = save_speed_tables(table, "bench_speed", cfg, caption)
    print(markdown_table(throughput_table(table)))
    print(f"\n{caption}\n")
    print(markdown_table(targets(table)))
    print(f"\ntables: {path} and {path.with_name('bench_speed_latency.md')} (latencies, n/a reasons)")


def cmd_export(args) -> None:
    from .deploy import export_checkpoint
    print(export_checkpoint(_checkpoint(args.checkpoint), args.out, int8=args.int8, threads=args.threads).describe())


def cmd_evaluate(args) -> None:
    from .evaluation.evaluate import evaluate, save_predictions
    location = args.csv or args.folder or ""
    if (args.dataset in ("csv", "folder")) != bool(location) or (args.csv and args.folder):
        raise ConfigError("--dataset csv needs --csv FILE, --dataset folder needs --folder DIR (and only then)")
    result = evaluate(args.checkpoint or [_checkpoint(None)], tta=args.tta, source=args.dataset, data_root=args.data_root,
                      part=args.split, batch_size=args.batch, location=str(location))
    out = save_predictions(result, args.out, folder=None if args.checkpoint else Path.cwd())  # not into the package
    print(result.describe())
    print(f"predictions: {out}")


def cmd_predict(args) -> None:
    from .explore import AgePredictor, predict_paths
    predictor = AgePredictor.from_checkpoint(_checkpoint(args.checkpoint), tta=args.tta, detector=args.detector, engine=args.engine)
    result = predict_paths(args.paths, predictor, args.out, every=args.every, max_frames=args.max_frames,
                           whole_image=args.whole_image, annotate_images=args.annotate)
    print(result.describe())


def cmd_calibrate(args) -> None:
    from .evaluation.calibration import calibrate
    result = calibrate(_checkpoint(args.checkpoint), tta=args.tta)
    print(result.describe())
    print(result.table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    test = result.by_group[result.by_group["split"] == "test"]
    print(test.drop(columns=["split"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def cmd_ship(args) -> None:
    from .evaluation.calibration import calibrate
    from .figures import markdown_table
    from .figures import save_table
    from .shipped import card_tables, shipped_caption, write_card, write_shipped
    from .training import load_model
    shipped = write_shipped(args.checkpoint)
    calibration = calibrate(shipped, tta=args.tta)
    tables = card_tables(shipped)
    card = write_card(shipped, tables, calibration)
    save_table(tables["accuracy"], "00_shipped_model", load_model(shipped)[1], shipped_caption(shipped))
    print(markdown_table(tables["accuracy"]))
    print(f"\nshipped {shipped} ({shipped.stat().st_size / 1e6:.1f} MB); {calibration.describe()}; card {card}")


def cmd_report(args) -> None:
    from .config import ROOT
    from .figures import reproducing_markdown, update_readme
    from .io import atomic_write_text
    cfg = _config(args)
    readme = args.readme or ROOT / "README.md"
    count = update_readme(cfg, readme)
    reproducing = readme.with_name("REPRODUCING.md")
    atomic_write_text(reproducing, reproducing_markdown(cfg))
    print(f"{readme}: headline and results rewritten from {count} table(s) in {cfg.figures_path / 'tables'}; "
          f"{reproducing} likewise")


def cmd_summary(args) -> None:
    from .model import format_summary
    from .resolve import resolve
    # the backbone as training chooses it; random weights: the summary is about shapes and sizes
    print(format_summary(resolve(_config(args)).network(weights=False), size=args.size))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fadenet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="preprocess the dataset into the cache and make its split")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("factorial", help="train chapter 04's 16 networks x eval.factorial_seeds and its "
                                         "budget-transfer runs (resumes; finished runs are read from "
                                         "<figures>/predictions/)")
    _add_config_args(p)
    p.set_defaults(func=cmd_factorial)

    p = sub.add_parser("download", help="download AFAD (needs a network)")
    p.add_argument("dataset", choices=["afad"])
    p.add_argument("--lite", action="store_true", help="AFAD-Lite instead of AFAD-Full")
    _add_config_args(p)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("reproduce", help="run every notebook in order with papermill")
    p.add_argument("--only", nargs="+", default=None, help="notebook numbers or names, e.g. 01 03")
    p.add_argument("--inplace", action="store_true",
                   help="also write executed notebooks back into notebooks/ (refreshes committed outputs)")
    p.add_argument("--profile", choices=profiles(), default=None)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("train", help="train the configured model (resumes an interrupted run)")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    bench = sub.add_parser("bench", help="benchmarks: each prints a table with the machine it ran on").add_subparsers(
        dest="benchmark", required=True, metavar="{data,train,speed,faces}")
    p = bench.add_parser("data", help="how fast the training input pipeline delivers augmented batches")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    _add_config_args(p)
    p.set_defaults(func=cmd_bench_data)

    p = bench.add_parser("train", help="images/s of the trainer's step in each of its modes, interleaved")
    p.add_argument("--steps", type=int, default=6, help="timed steps of each mode in each round")
    p.add_argument("--rounds", type=int, default=3, help="rounds (the modes take turns, each round in another order)")
    p.add_argument("--modes", nargs="+", default=None, metavar="WORD",
                   help="time only the modes whose names contain one of these words (e.g. compile default)")
    _add_config_args(p)
    p.set_defaults(func=cmd_bench_train)

    p = bench.add_parser("speed", help="inference latency and throughput of the networks on each back-end")
    p.add_argument("--batch", type=_int_list, default=None,
                   help="comma-separated batch sizes (default bench.batches, 1,32)")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="networks to time (default bench.models=all: FADE-Net, its variants, "
                        "the backbone baselines and torchvision mobilenet_v3_large)")
    p.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                   help="eager channels_last compile ort_fp32 ort_int8 (and cuda cuda_amp "
                        "cuda_graphs with a GPU; default all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default bench.threads, 2)")
    p.add_argument("--size", type=int, default=None, help="input size in pixels (default bench.size, 224)")
    _add_config_args(p)
    p.set_defaults(func=cmd_bench_speed)

    p = bench.add_parser("faces", help="the photo path (detect, align, predict) against the dataset path")
    p.add_argument("--checkpoint", type=Path, default=None, help=CHECKPOINT_HELP)
    p.add_argument("--count", type=int, default=None, help="test faces, spread over the split (default bench.faces, 300)")
    p.add_argument("--detectors", nargs="+", default=["haar", "mtcnn"], choices=DETECTORS[1:],
                   help="the detectors to compare")
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="the network in PyTorch or in ONNX Runtime (after `export`)")
    _add_config_args(p)
    p.set_defaults(func=cmd_bench_faces)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (dynamic batch and size), checked against "
                                      "PyTorch on real faces; --int8 adds a quantised copy and both test MAEs")
    p.add_argument("--checkpoint", type=Path, default=None, help=CHECKPOINT_HELP)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--int8", action="store_true",
                   help="also write <name>.int8.onnx, calibrated on real training faces, and report its test MAE")
    p.add_argument("--out", type=Path, default=None, help="the ONNX file (default: model.onnx beside the checkpoint)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: torch's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="MAE and CS@5 of a checkpoint or an ensemble, in- or cross-dataset")
    p.add_argument("--checkpoint", action="append", default=None, type=Path,
                   help="a checkpoint (best.pt); repeat to average an ensemble's distributions "
                        "(default: the shipped model)")
    p.add_argument("--tta", choices=TTA_MODES, default="none")
    p.add_argument("--dataset", choices=[s for s in SOURCES if s != "auto"], default=None,
                   help="evaluate on this dataset (default: the one trained on); another one is "
                        "cross-dataset and all its faces count as test")
    p.add_argument("--data-root", default=None, help="folder holding the datasets (default: $FADENET_DATA_ROOT)")
    p.add_argument("--csv", type=Path, default=None, help="with --dataset csv: your CSV of path,age")
    p.add_argument("--folder", type=Path, default=None, help="with --dataset folder: your <age>/<image> folder")
    p.add_argument("--split", choices=EVAL_PARTS, default="test")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", type=Path, default=None, help="predictions CSV (default: beside the checkpoint)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict the age of every face in images, folders and videos into a CSV")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="image, folder (searched recursively), video file, or a camera index such as 0")
    p.add_argument("--checkpoint", type=Path, default=None, help=CHECKPOINT_HELP)
    p.add_argument("--tta", choices=TTA_MODES, default="none")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"),
                   help="the CSV (annotated videos are written beside it)")
    p.add_argument("--every", type=float, default=1.0, help="seconds between the analysed frames of a video")
    p.add_argument("--max-frames", type=int, default=0,
                   help="analysed frames per video or camera at most (0: all; a camera then runs until Ctrl-C)")
    p.add_argument("--whole-image", action="store_true",
                   help="predict from the centred square of pictures in which no face is found")
    p.add_argument("--detector", choices=DETECTORS, default="auto",
                   help="mtcnn: landmarks and alignment; haar: box only; auto: mtcnn where installed")
    p.add_argument("--annotate", action="store_true",
                   help="also write each picture with its faces boxed and labelled, into <out stem>_annotated/")
    p.add_argument("--engine", choices=ENGINES, default="torch",
                   help="onnx: the network in ONNX Runtime, from the model.onnx that `export` wrote beside the checkpoint")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("calibrate", help="fit the temperature and the conformal intervals that make a checkpoint's "
                                         "age intervals hold as often as they say (on its validation split); "
                                         "predict uses the one closer per life stage")
    p.add_argument("--checkpoint", type=Path, default=None, help=CHECKPOINT_HELP)
    p.add_argument("--tta", choices=TTA_MODES, default="none", help="the TTA predict will be run with")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("ship", help="make a trained checkpoint the package's pretrained model: float16 "
                                    "weights under their hash, calibration, config and model card in fadenet/pretrained/")
    p.add_argument("--checkpoint", required=True, type=Path, help="a trained checkpoint (best.pt)")
    p.add_argument("--tta", choices=TTA_MODES, default="flip", help="the TTA its intervals are calibrated for")
    p.set_defaults(func=cmd_ship)

    p = sub.add_parser("report", help="rewrite README's results section from the tables in figures/tables/ "
                                     "(the reference profile's unless --profile names another)")
    p.add_argument("--readme", type=Path, default=None, help="file to update (default: the project's README.md)")
    _add_config_args(p)
    p.set_defaults(func=cmd_report, profile="reference")  # README shows the committed run

    p = sub.add_parser("summary", help="parameter table by part and multiply-adds")
    p.add_argument("--size", type=int, default=224)
    _add_config_args(p)
    p.set_defaults(func=cmd_summary)
    return parser


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be at least 1")
    return values


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like ``parse_args``, but ``key=value`` overrides may also follow options
    (``bench train --profile quick epochs=2``, ``reproduce --only 03 epochs=2``), which argparse
    alone rejects or reads as option values."""
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "only", None):  # `--only 03 epochs=2`: the list option swallowed the override
        extra = [a for a in args.only if "=" in a] + extra
        args.only = [a for a in args.only if "=" not in a]
        if not args.only:
            parser.error("--only needs at least one notebook number, e.g. --only 03")
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    from .data.download import DownloadError
    from .data.sources import DatasetError
    from .data.splits import SplitError
    from .figures import ReportError
    from .runner import NotebookFailed
    from .training import CheckpointError, TrainingDiverged
    from .runtime import keep_freed_memory
    keep_freed_memory()  # here, not on import: importing the package changes no process settings
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (ConfigError, DatasetError, DownloadError, SplitError, NotebookFailed, CheckpointError,
            TrainingDiverged, ReportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
