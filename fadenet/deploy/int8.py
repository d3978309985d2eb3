"""Chapter 07's INT8 study: what 8-bit quantisation buys on this CPU for one trained network,
each recipe timed against FP32 with the harness of :mod:`fadenet.deploy.speed`, its test MAE, and
where the time goes (ONNX Runtime's per-operator profile)."""
from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import Config
from ..data import FaceSet, Split
from .export import (DEFAULT_INT8, INPUT, INT8_RECIPES, Int8Recipe, calibration_batch, export_onnx, face_batch,
                     mae_by_engine, ort_session, quantize_int8, spread_rows)
from .speed import WARMUP, round_robin, torch_threads


@dataclass
class Int8Study:
    """INT8 against FP32 for one trained network (see :func:`int8_study`)."""
    table: pd.DataFrame     # one row per engine: batch-1 throughput, speed-up over FP32, test MAE
    profile: Profile        # where the time goes, FP32 and the default recipe (else the first)


def int8_study(cfg: Config, model: nn.Module, faces: FaceSet, split: Split,
               recipes: Sequence[Int8Recipe] = INT8_RECIPES, progress: bool = True) -> Int8Study:
    """Quantise ``model`` (trained on ``faces``) with each recipe, calibrated on real training
    faces; measure every engine's test MAE at the training size and its batch-1 latency at the
    benchmark size in one interleaved run; profile FP32 and the default recipe (the first where
    the default is not among ``recipes``) by operator type."""
    b = cfg.bench
    with tempfile.TemporaryDirectory(prefix="fadenet-int8-") as folder, torch_threads(b.threads):
        fp32 = export_onnx(model, Path(folder) / "fp32.onnx", faces.size)
        calibration = calibration_batch(faces, split)
        int8 = [quantize_int8(fp32, Path(folder) / f"int8-{i}.onnx", calibration, recipe)
                for i, recipe in enumerate(tqdm(recipes, desc="quantising", disable=not progress, leave=False))]
        paths = {"ONNX Runtime FP32": fp32}
        for recipe, path in zip(recipes, int8):
            paths[f"ONNX Runtime INT8, {recipe.label}{' (default)' if recipe == DEFAULT_INT8 else ''}"] = path
        profiled = int8[list(recipes).index(DEFAULT_INT8)] if DEFAULT_INT8 in recipes else int8[0]
        sessions = {name: ort_session(path, b.threads) for name, path in paths.items()}
        mae = mae_by_engine(model, sessions, faces, split.test, progress)
        x = face_batch(faces, spread_rows(faces, split.test, 1), b.size)
        calls = {"PyTorch FP32": functools.partial(model.eval(), torch.from_numpy(x))}
        calls.update({name: functools.partial(s.run, None, {INPUT: x}) for name, s in sessions.items()})
        with torch.inference_mode():
            for call in calls.values():
                for _ in range(WARMUP):
                    call()
            times = round_robin(calls, b.repeats, b.seconds, "INT8 recipes", progress)
        profile = op_profile({"FP32": fp32, "INT8": profiled}, x, b.threads)
    per_second = {name: 1.0 / float(np.median(t)) for name, t in times.items()}
    fp32_mae, fp32_speed = mae["ONNX Runtime FP32"], per_second["ONNX Runtime FP32"]
    table = pd.DataFrame([{"engine": name, f"images/s (batch 1, {b.size}px)": per_second[name],
                           "speed-up over ONNX Runtime FP32": round(per_second[name] / fp32_speed, 2),
                           f"test MAE ({faces.size}px)": mae[name],
                           "MAE - FP32 MAE": mae[name] - fp32_mae} for name in calls])
    return Int8Study(table, profile)


def network_profile(cfg: Config, model: nn.Module, faces: FaceSet, split: Split) -> Profile:
    """Where ONNX Runtime spends a batch-1 call of ``model`` at the benchmark size, in FP32 and
    in the default INT8 recipe (calibrated on real training faces)."""
    b = cfg.bench
    with tempfile.TemporaryDirectory(prefix="fadenet-profile-") as folder, torch_threads(b.threads):
        fp32 = export_onnx(model, Path(folder) / "fp32.onnx", faces.size)
        calibration = calibration_batch(faces, split)
        int8 = quantize_int8(fp32, Path(folder) / "int8.onnx", calibration)
        x = face_batch(faces, spread_rows(faces, split.test, 1), b.size)
        return op_profile({"FP32": fp32, "INT8": int8}, x, b.threads)


@dataclass
class Profile:
    """Where ONNX Runtime spends one call of each graph (milliseconds per call, from its own
    profiler; the first call left out)."""
    operators: pd.DataFrame  # by operator type (rows), one column per graph, busiest first, with the total
    nodes: pd.DataFrame      # the busiest nodes of each graph, alike nodes (same operator and shapes) summed


def op_profile(graphs: dict[str, Path], x: np.ndarray, threads: int, runs: int = 20, top: int = 8) -> Profile:
    """Profile ``runs`` calls of each graph on the batch ``x``; ``top`` nodes per graph."""
    kernels = pd.concat([_kernel_times(path, x, threads, runs).assign(graph=name) for name, path in graphs.items()])
    operators = kernels.pivot_table(index="operator", columns="graph", values="ms", aggfunc="sum", fill_value=0.0)
    operators = operators[list(graphs)].rename(columns=lambda g: f"{g} ms/call")
    operators = operators.loc[operators.max(axis=1).sort_values(ascending=False).index]
    operators.columns.name = None
    operators.loc["total"] = operators.sum()
    nodes = (kernels.groupby(["graph", "operator", "shapes"], sort=False)["ms"].agg(["sum", "size"]).reset_index()
             .rename(columns={"sum": "ms/call", "size": "nodes"}))
    nodes["share of the call"] = nodes["ms/call"] / nodes["graph"].map(kernels.groupby("graph")["ms"].sum())
    nodes = nodes.sort_values("ms/call", ascending=False).groupby("graph", sort=False).head(top)
    nodes = nodes.sort_values("graph", key=lambda g: g.map(list(graphs).index), kind="stable")
    return Profile(operators.round(3), nodes.reset_index(drop=True).round(3))


def _kernel_times(path: Path, x: np.ndarray, threads: int, runs: int) -> pd.DataFrame:
    """One row per node of the graph: operator, its input -> output shapes, ms per call."""
    with tempfile.TemporaryDirectory(prefix="fadenet-profile-") as folder:
        session = ort_session(path, threads, profile_prefix=str(Path(folder) / "profile"))
        for _ in range(runs + 1):
            session.run(None, {INPUT: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    calls = sorted((ev for ev in events if ev.get("name") == "model_run"), key=lambda ev: ev["ts"])
    after_first = calls[0]["ts"] + calls[0]["dur"]
    rows = [(ev["name"], ev["args"]["op_name"], _shapes(ev["args"]), ev["dur"]) for ev in events
            if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time") and ev["ts"] > after_first]
    table = pd.DataFrame(rows, columns=["node", "operator", "shapes", "us"])
    table = table.groupby(["node", "operator", "shapes"], sort=False)["us"].sum().reset_index()
    table["ms"] = table.pop("us") / (len(calls) - 1) / 1e3
    return table.drop(columns="node")


def _shapes(args: dict) -> str:
    """"3840x7x7 -> 512x7x7": a node's first input and first output without the batch axis."""
    def first(key: str) -> str:
        shapes = [list(s.values())[0] for s in args.get(key, [])]
        return "x".join(map(str, shapes[0][1:])) if shapes and shapes[0] else "?"
    return f"{first('input_type_shape')} -> {first('output_type_shape')}"
