"""Chapter 07: how fast each network runs on each back-end, all measured in one run.

Every (network, back-end, batch size) is made ready first (ONNX export, INT8 quantisation,
torch.compile, warm-up calls). The timed calls then go round-robin in a shuffled order, so that
whatever else the machine is doing slows them all alike and their ratios stay comparable when
the absolute figures do not. In each round every contender first runs untimed for a few tens of
milliseconds, then timed for a few more: torch's OpenMP threads and ONNX Runtime's thread pool
keep spinning for some milliseconds after their work, and the calls right after a switch of
engine would pay for it.

Latency is the wall time of one call (a batch of normalised faces in, logits out); throughput is
batch size / median latency.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnxruntime as ort
import pandas as pd
import torch
import torchvision
from torch import nn
from tqdm.auto import tqdm

from ..config import Config, ConfigError, ModelConfig
from ..data import FaceSet, Split
from ..harness import interleaved
from ..model import SpatialPyramidPooling, build_model, count_macs, count_parameters
from ..variants import VANILLA, VARIANTS, variant_config
from ..runtime import compile_model
from .export import (DEFAULT_INT8, INPUT, Int8Recipe, calibration_batch,
                     export_onnx, face_batch, ort_session, quantize_int8, spread_rows)

BACKENDS = {"eager": "PyTorch eager", "channels_last": "PyTorch channels-last",
            "compile": "torch.compile (inductor, frozen)", "ort_fp32": "ONNX Runtime FP32",
            "ort_int8": "ONNX Runtime INT8"}
CUDA_BACKENDS = {"cuda": "CUDA FP32", "cuda_amp": "CUDA AMP (FP16)", "cuda_graphs": "CUDA AMP + CUDA graphs"}
PARALLEL_SPP = "fadenet (parallel SPP)"
WARMUP = 3       # untimed calls after preparation (the first one compiles, for torch.compile)
MIN_ROUNDS = 3   # timed rounds even when the time budget is spent earlier
# Each contender's turn in a round: untimed calls first, so that the other engine's threads,
# which keep spinning after their work, are idle before the timed calls. Measured here (2 cores,
# batch 1): after one settling call, FADE-Net in ONNX Runtime took 22 ms against 9 ms in a loop of
# its own; after 0.1 s of settling, within 3% of it, and after 0.25 s within 1%.
SETTLE_SECONDS = 0.2
BLOCK_SECONDS = 0.06


class Unavailable(Exception):
    """A back-end that cannot run a network here; the message is the reason shown in the table."""


# ---- what is timed ---------------------------------------------------------------------------
def bench_models() -> dict[str, Callable[[], nn.Module]]:
    """Every distinct network the benchmark times, by name, FADE-Net and the reference first:
    the ablation and leave-one-out variants and the backbone baselines of notebook 02 (randomly
    initialised: speed does not depend on the weights), FADE-Net with the parallel SPP pools,
    and torchvision's 1000-class MobileNetV3-Large ("vanilla"). Variants that differ only in
    their loss share a network with another and are timed once (see :func:`same_network`)."""
    return _networks()[0]


def same_network() -> dict[str, str]:
    """Variants not timed because their network is another's, e.g. {"+dldl_v2": "baseline"}."""
    return _networks()[1]


@functools.cache
def _networks() -> tuple[dict[str, Callable[[], nn.Module]], dict[str, str]]:
    fadenet = variant_config("fadenet")
    configs = {"fadenet": fadenet.model, PARALLEL_SPP: dataclasses.replace(fadenet.model, fast_spp=False),
               VANILLA: None, **{name: variant_config(name).model for name in VARIANTS}}
    builders: dict[str, Callable[[], nn.Module]] = {VANILLA: torchvision.models.mobilenet_v3_large}
    timed: dict[str, str] = {}   # network key -> name of the variant that times it
    aliases = {}
    for name, model_cfg in configs.items():
        if model_cfg is None:
            continue
        key = _network_key(model_cfg)
        if key in timed:
            aliases[name] = timed[key]
        else:
            timed[key] = name
            builders[name] = functools.partial(build_model, model_cfg)
    order = list(configs)
    return dict(sorted(builders.items(), key=lambda item: order.index(item[0]))), aliases


def _network_key(cfg: ModelConfig) -> str:
    """The layers of the network ``cfg`` builds, as text: configurations that differ only in
    the loss, or in switches that build the same layers, have the same key."""
    return repr(build_model(cfg))


def select_models(names: str | Sequence[str]) -> dict[str, Callable[[], nn.Module]]:
    """The builders of ``names`` ("all", a comma-separated string or a list), in the given order."""
    known = bench_models()
    if isinstance(names, str):
        if names.strip() == "all":
            return known
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"bench.models: unknown network(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"known: all, {', '.join(known)}")
    return {n: known[n] for n in names}


def available_backends() -> list[str]:
    """The CPU back-ends, and the CUDA ones when a GPU is present."""
    return list(BACKENDS) + (list(CUDA_BACKENDS) if torch.cuda.is_available() else [])


# ---- getting a back-end ready ----------------------------------------------------------------
class Network:
    """One network under test and what its back-ends share: the ONNX files, the channels-last
    and compiled copies, and the seconds each took to make."""

    def __init__(self, name: str, model: nn.Module, folder: Path, calibration: np.ndarray, threads: int,
                 recipe: Int8Recipe = DEFAULT_INT8):
        self.name, self.model, self.folder = name, model.eval(), folder
        self.calibration, self.threads, self.recipe = calibration, threads, recipe
        self.made: dict[str, float] = {}
        self._cache: dict[str, object] = {}

    def _once(self, key: str, make: Callable[[], object]) -> object:
        """``make()`` the first time, its result (or its exception) after."""
        if key not in self._cache:
            started = time.perf_counter()
            try:
                self._cache[key] = make()
            except Exception as e:  # a failed export is not retried at the next batch size
                self._cache[key] = e
            self.made[key] = time.perf_counter() - started
        if isinstance(self._cache[key], Exception):
            raise self._cache[key]
        return self._cache[key]

    def onnx(self, precision: str) -> Path:
        fp32 = self.folder / f"{_slug(self.name)}.onnx"
        self._once("fp32", lambda: export_onnx(self.model, fp32, self.calibration.shape[-1]))
        if precision == "fp32":
            return fp32
        return self._once("int8", lambda: quantize_int8(fp32, fp32.with_suffix(".int8.onnx"), self.calibration,
                                                       self.recipe))

    def session(self, precision: str) -> ort.InferenceSession:
        return self._once(f"session {precision}", lambda: ort_session(self.onnx(precision), self.threads))

    def channels_last(self) -> nn.Module:
        return self._once("channels_last", lambda: copy.deepcopy(self.model).to(memory_format=torch.channels_last))

    def compiled(self) -> nn.Module:
        # freezing folds the weights into the graph as constants, which inference on CPU needs
        # to be fast (without it, compiled code was many times slower than eager here)
        return self._once("compile", lambda: compile_model(self.model, dynamic=False, options={"freezing": True}))

    def on_gpu(self) -> nn.Module:
        return self._once("cuda", lambda: copy.deepcopy(self.model).cuda())

    def setup_seconds(self, backend: str) -> float:
        keys = {"ort_fp32": ("fp32", "session fp32"), "ort_int8": ("fp32", "int8", "session int8"),
                "channels_last": ("channels_last",)}.get(backend, ())
        return sum(self.made.get(k, 0.0) for k in keys)


@dataclass
class CompileBudget:
    """torch.compile cannot be interrupted, so it is tried only while compiling has taken less
    than ``seconds`` in total; later networks get "n/a" with that reason."""
    seconds: float
    spent: float = 0.0

    def check(self) -> None:
        if self.seconds <= 0:
            raise Unavailable("not tried (bench.compile_seconds=0)")
        if self.spent >= self.seconds:
            raise Unavailable(f"not tried: the compile budget of {self.seconds:.0f} s was spent")


def make_call(net: Network, backend: str, x: torch.Tensor) -> Callable[[], object]:
    """A call that runs the batch ``x`` through ``net`` on ``backend`` (to be run under
    ``torch.inference_mode``); raises :class:`Unavailable` when the back-end cannot."""
    if backend == "eager":
        return functools.partial(net.model, x)
    if backend == "channels_last":
        return functools.partial(net.channels_last(), x.contiguous(memory_format=torch.channels_last))
    if backend == "compile":
        return functools.partial(net.compiled(), x)
    if backend in ("ort_fp32", "ort_int8"):
        session, feed = net.session(backend[4:]), {INPUT: x.numpy()}
        return functools.partial(session.run, None, feed)
    if backend in CUDA_BACKENDS:
        return _cuda_call(net.on_gpu(), x.cuda(), amp=backend != "cuda", graph=backend == "cuda_graphs")
    raise ValueError(f"back-end {backend!r} is not one of {', '.join(available_backends())}")


def _cuda_call(model: nn.Module, x: torch.Tensor, amp: bool, graph: bool) -> Callable[[], object]:
    """A synchronised CUDA call (the time includes the GPU's work), optionally replaying a
    captured CUDA graph, which removes the per-kernel launch cost that dominates at batch 1."""
    def run():
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            return model(x)

    if not graph:
        def call():
            out = run()
            torch.cuda.synchronize()
            return out
        return call
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as CUDA graphs require
        for _ in range(WARMUP):
            run()
    torch.cuda.current_stream().wait_stream(side)
    captured = torch.cuda.CUDAGraph()
    with torch.cuda.graph(captured):
        out = run()

    def replay():
        captured.replay()
        torch.cuda.synchronize()
        return out
    return replay


def ready(net: Network, backend: str, x: torch.Tensor, budget: CompileBudget) -> tuple[Callable | None, float, str]:
    """(warmed-up call or None, seconds it took to get ready, "" or the reason it is n/a)."""
    started = time.perf_counter()
    try:
        if backend == "compile":
            budget.check()
        call = make_call(net, backend, x)
        for _ in range(WARMUP):  # for torch.compile, the first call at a new batch size compiles
            call()
    except Unavailable as e:
        return None, 0.0, f"n/a ({e})"
    except Exception as e:  # an export, quantiser or compiler failure is a result, not a crash
        first_line = (str(e).strip().splitlines() or [""])[0][:160]
        return None, time.perf_counter() - started, f"n/a ({type(e).__name__}: {first_line})"
    finally:
        if backend == "compile":
            budget.spent += time.perf_counter() - started
    return call, net.setup_seconds(backend) + time.perf_counter() - started, ""


# ---- timing ----------------------------------------------------------------------------------
def round_robin(calls: dict, repeats: int, seconds: float, desc: str = "timing", progress: bool = True,
                seed: int = 0, settle: float = SETTLE_SECONDS, block: float = BLOCK_SECONDS) -> dict[object, list[float]]:
    """Latency of every call, in seconds, from :func:`fadenet.harness.interleaved` rounds (fewer than
    ``repeats`` when ``seconds`` are spent, but at least MIN_ROUNDS); in each round a call first
    runs untimed for ``settle`` seconds, then timed for ``block`` seconds (at least once each)."""
    def turn(call: Callable[[], object]) -> Callable[[], list[float]]:
        return lambda: (_run_for(call, settle), _run_for(call, block))[1]
    rounds = interleaved({key: turn(call) for key, call in calls.items()}, repeats, seconds, MIN_ROUNDS, seed,
                         desc, progress)
    return {key: [t for block_times in times for t in block_times] for key, times in rounds.items()}


def _run_for(call: Callable[[], object], seconds: float) -> list[float]:
    """Run ``call`` back to back until ``seconds`` have passed (at least once); each call's time."""
    times, end = [], time.perf_counter() + seconds
    while not times or time.perf_counter() < end:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return times


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def speed_table(cfg: Config, faces: FaceSet, split: Split, models: str | Sequence[str] | None = None,
                backends: Sequence[str] | None = None, batches: Sequence[int] | None = None,
                size: int | None = None, threads: int | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per network, back-end and batch size: median and 90th-percentile latency,
    throughput, timed calls, seconds to get ready, parameters and multiply-adds, and "n/a
    (reason)" where a back-end cannot run. Unset arguments come from ``cfg.bench``.

    Inputs are real faces of ``faces``' test split resized to ``size``; INT8 graphs are calibrated
    on real training faces (:func:`calibration_batch`)."""
    b = cfg.bench
    builders = select_models(models if models is not None else b.models)
    backends = list(backends or available_backends())
    unknown = [b for b in backends if b not in available_backends()]
    if unknown:
        raise ConfigError(f"unknown or unavailable back-end(s) {', '.join(unknown)}; here: "
                          f"{', '.join(available_backends())}")
    batches, size, threads = list(batches or b.batches), size or b.size, threads or b.threads
    x = torch.from_numpy(face_batch(faces, np.resize(spread_rows(faces, split.test, max(batches)), max(batches)), size))
    calibration = calibration_batch(faces, split)
    budget = CompileBudget(b.compile_seconds)
    rows = []
    # the networks of one class share a forward, and each (network, batch size) is a graph of it:
    # past dynamo's recompile limit (8) it would run eager code in the compile rows
    graphs = len(builders) * len(batches)
    with (tempfile.TemporaryDirectory(prefix="fadenet-speed-") as folder, torch_threads(threads), torch.inference_mode(),
          torch._dynamo.config.patch(recompile_limit=graphs, accumulated_recompile_limit=max(256, graphs))):
        torch.manual_seed(0)
        nets = [Network(name, build(), Path(folder), calibration, threads) for name, build in builders.items()]
        for batch in batches:
            calls, notes, setup = {}, {}, {}
            jobs = [(net, backend) for net in nets for backend in backends]
            for net, backend in tqdm(jobs, desc=f"preparing, batch {batch}", disable=not progress, leave=False):
                call, setup[net.name, backend], notes[net.name, backend] = ready(net, backend, x[:batch], budget)
                if call is not None:
                    calls[net.name, backend] = call
            times = round_robin(calls, b.repeats, b.seconds, f"timing, batch {batch}", progress)
            rows += [_row(net.name, backend, batch, times.get((net.name, backend), []), setup[net.name, backend],
                          notes[net.name, backend]) for net, backend in jobs]
        costs = {net.name: (count_parameters(net.model), count_macs(net.model, size) / 1e6) for net in nets}
    table = pd.DataFrame(rows)
    table.insert(3, "size", size)
    table.insert(4, "threads", threads)
    table["parameters"] = table["model"].map(lambda n: costs[n][0])
    table[f"M multiply-adds @{size}px"] = table["model"].map(lambda n: round(costs[n][1], 1))
    return table


def _row(model: str, backend: str, batch: int, seconds: list[float], setup: float, note: str) -> dict:
    ms = np.asarray(seconds) * 1e3
    timed = len(ms) > 0
    return {"model": model, "backend": BACKENDS.get(backend) or CUDA_BACKENDS[backend], "batch": batch,
            "p50 ms": float(np.median(ms)) if timed else np.nan,
            "p90 ms": float(np.percentile(ms, 90)) if timed else np.nan,
            "images/s": float(batch * 1e3 / np.median(ms)) if timed else np.nan,
            "timed calls": len(ms), "setup s": round(setup, 1), "note": note}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


# ---- two questions the table alone does not answer -------------------------------------------
def spp_pooling_speed(cfg: Config, channels: int = 960, progress: bool = True) -> pd.DataFrame:
    """Latency of SPP's pooling alone (the map and its 5, 9 and 13 max-pools) on FADE-Net's last
    map at the benchmark size, as three parallel pools and as three cascaded 5x5 pools; the
    1x1 projection after them is the same in both forms and left out."""
    b = cfg.bench
    parallel = "parallel (5, 9, 13)"
    forms = {parallel: SpatialPyramidPooling(channels, fast=False),
             "cascaded (5, 5, 5)": SpatialPyramidPooling(channels, fast=True)}
    side = -(-b.size // 32)
    maps = {batch: torch.randn(batch, channels, side, side) for batch in b.batches}
    calls = {(form, batch): functools.partial(module.pyramid, maps[batch])
             for form, module in forms.items() for batch in b.batches}
    with torch_threads(b.threads), torch.inference_mode():
        for call in calls.values():
            call()
        times = round_robin(calls, b.repeats, b.seconds, "SPP pooling", progress)
    median = {key: 1e3 * float(np.median(t)) for key, t in times.items()}
    return pd.DataFrame([{"SPP pooling": form, "batch": batch, "map": f"{channels}x{side}x{side}",
                          "p50 ms": median[form, batch],
                          "speed-up over parallel": round(median[parallel, batch] / median[form, batch], 2)}
                         for form, batch in calls])
