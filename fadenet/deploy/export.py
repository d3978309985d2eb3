"""ONNX export of trained networks, ONNX Runtime sessions, the parity check against PyTorch and
INT8 static quantisation calibrated on real training faces.

An exported graph takes normalised RGB batches (the training input, see
:func:`fadenet.model.normalize`) of any batch size and any square or rectangular size of
at least 32 pixels, and returns the 81 logits; softmax and the expected age stay outside, as in
PyTorch, so that ONNX Runtime and PyTorch can be compared on the same numbers.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from torch.export import Dim
from tqdm.auto import tqdm

from ..data import FaceSet, Split
from ..data.cache import stratified_pick
from ..data.sources import SOURCE_NAMES
from ..io import atomic_path
from ..runtime import VNNI_FLAGS, cpu_info
from ..model import eval_mode, expected_age, normalize, predict, predict_probs, to_tensor
from ..training import CheckpointError, load_model, trained_faces

log = logging.getLogger("fadenet.deploy")

INPUT, OUTPUT = "image", "logits"
PARITY_TOLERANCE = 1e-4   # largest |p(ONNX Runtime) - p(PyTorch)| of an FP32 export, per age
PARITY_FACES = 32
CALIBRATION_FACES = 256   # real training faces that set the INT8 activation ranges
MIN_SIDE = 32             # the smallest input the exported graph accepts (stride 32)


class DeployError(CheckpointError):
    """A checkpoint whose ONNX export does not reproduce it; the message names the file and the
    difference (a CheckpointError, so the command line reports it as one line)."""


@dataclass(frozen=True)
class Int8Recipe:
    """How ONNX Runtime's static quantiser rewrites the graph: QDQ (quantise/dequantise pairs that
    ORT fuses into integer kernels) or QOperator (integer operators written out); unsigned 8-bit
    activations with signed (S8) or unsigned (U8) 8-bit weights; weights per output channel;
    ``reduce_range`` keeps weights to 7 bits, which avoids the 16-bit overflow of AVX2's
    u8 x s8 multiply-add (VPMADDUBSW) on CPUs without VNNI (``fadenet.runtime.cpu_features()`` says)."""
    format: str = "qdq"
    weights: str = "int8"
    reduce_range: bool = True

    @property
    def label(self) -> str:
        kind = "QDQ" if self.format == "qdq" else "QOperator"
        types = "U8S8" if self.weights == "int8" else "U8U8"
        return f"{kind} {types} per-channel" + (", 7-bit weights" if self.reduce_range else "")


# The candidates notebook 07 compares. The default depends on the CPU (notebook 07's INT8 table
# has the figures). With VNNI, unsigned weights keeping all 8 bits were the most accurate fast
# recipe (test MAE +0.05 and +0.09 over FP32 in two reference runs, against +0.09 and +0.13 for
# the 7-bit U8S8 ones) at about twice FP32's speed. Without VNNI the same recipe lost 0.27 years
# against 0.14 for 7-bit U8S8 weights, at the same speed (AVX2 reference run of notebook 07).
INT8_RECIPES = (Int8Recipe("qoperator", "uint8", False), Int8Recipe(), Int8Recipe("qdq", "uint8", False),
                Int8Recipe("qoperator"))
DEFAULT_INT8 = INT8_RECIPES[0] if VNNI_FLAGS & cpu_info()[1] else INT8_RECIPES[3]


def export_onnx(model: nn.Module, path: str | Path, size: int) -> Path:
    """Write ``model`` in eval mode as one self-contained ONNX file (weights inside) whose batch,
    height and width are dynamic; ``size`` is only the size it is traced at."""
    path = Path(path)
    example = (torch.zeros(2, 3, size, size),)  # batch 2: torch.export would fix a batch of 1
    spatial = {0: Dim("batch"), 2: Dim("height", min=MIN_SIDE), 3: Dim("width", min=MIN_SIDE)}
    with eval_mode(model), torch.no_grad():
        program = torch.onnx.export(model, example, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=(spatial,), dynamo=True, verbose=False)
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
    return path


def ort_session(path: str | Path, threads: int = 0, profile_prefix: str | None = None,
                spin: bool = True) -> ort.InferenceSession:
    """A CPU session tuned for latency: ``threads`` intra-op threads (0 = torch's thread count),
    one inter-op thread (the graph is a chain, so parallel branches gain nothing) and every graph
    optimisation (batch norm folded into convolutions, convolution + activation fusion, the NCHWc
    blocked layout). ``profile_prefix`` records a per-operator profile (see ``end_profiling``).
    ``spin`` False stops idle threads from spinning between calls: needed where other work (a
    face detector in torch) runs between them on the same cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT's warnings about hardware-specific graphs are not for users
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def face_batch(faces: FaceSet, rows: np.ndarray, size: int | None = None) -> np.ndarray:
    """The normalised float32 NCHW faces ``rows``, resized to ``size`` when that differs from the cache's."""
    x = normalize(to_tensor(faces.images[np.asarray(rows)]))
    if size and size != faces.size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < faces.size)
    return x.numpy()


def spread_rows(faces: FaceSet, rows: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` of ``rows`` spread over their ages (all of them when there are fewer)."""
    return rows[stratified_pick(faces.ages[rows], n, seed)]


def calibration_batch(faces: FaceSet, split: Split) -> np.ndarray:
    """The normalised faces that set INT8 activation ranges: CALIBRATION_FACES training faces
    spread over the ages, at the cache's size."""
    return face_batch(faces, spread_rows(faces, split.train, CALIBRATION_FACES))


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session as a module returning the logits of a normalised batch, so that
    :func:`fadenet.model.predict_probs` (TTA views, averaging) runs it as it runs the network."""

    def __init__(self, session: ort.InferenceSession):
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run([OUTPUT], {INPUT: x.numpy()})[0])


def onnx_probs(session: ort.InferenceSession, faces: FaceSet, rows: np.ndarray, batch_size: int = 64,
               desc: str | None = None) -> np.ndarray:
    """Age distributions (N, K) that ``session`` predicts for the faces ``rows`` (no TTA), float32."""
    out = []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", disable=desc is None, leave=False):
        (logits,) = session.run([OUTPUT], {INPUT: face_batch(faces, rows[start:start + batch_size])})
        out.append(predict(torch.from_numpy(logits))[0].numpy())
    return np.concatenate(out)


def max_prob_difference(model: nn.Module, session: ort.InferenceSession, faces: FaceSet, rows: np.ndarray) -> float:
    """Largest |p(ONNX Runtime) - p(PyTorch)| over the faces ``rows`` and all ages."""
    reference = predict_probs(model, faces.images, rows, batch_size=len(rows))
    return float(np.abs(onnx_probs(session, faces, rows, batch_size=len(rows)) - reference).max())


@contextlib.contextmanager
def _without_integer_tensor_warnings() -> Iterator[None]:
    """The quantiser warns, on the root logger, about every integer tensor of the graph's shape
    arithmetic (a dynamic batch and size make many); those are never quantised, and the warnings
    say nothing about the result."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Inference failed or unsupported type to quantize")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class _Faces(CalibrationDataReader):
    """Feeds the calibration faces to the quantiser in batches."""

    def __init__(self, x: np.ndarray, batch_size: int):
        self.batches = iter([{INPUT: x[i:i + batch_size]} for i in range(0, len(x), batch_size)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def quantize_int8(fp32: str | Path, out: str | Path, calibration: np.ndarray,
                  recipe: Int8Recipe = DEFAULT_INT8) -> Path:
    """Static INT8 quantisation of the ONNX graph ``fp32``, its activation ranges calibrated
    (min-max) on the normalised faces ``calibration``; written atomically to ``out``."""
    out = Path(out)
    with tempfile.TemporaryDirectory() as folder, atomic_path(out) as tmp, _without_integer_tensor_warnings():
        prepared = Path(folder) / "prepared.onnx"
        # shape inference and graph clean-up first, as the quantiser asks; ONNX Runtime's symbolic
        # shape inference cannot follow the dynamic height and width, ONNX's own can
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(prepared, tmp, _Faces(calibration, 16), per_channel=True,
                        quant_format=QuantFormat.QDQ if recipe.format == "qdq" else QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8 if recipe.weights == "int8" else QuantType.QUInt8,
                        reduce_range=recipe.reduce_range)
    return out


@dataclass
class Export:
    """What ``export_checkpoint`` wrote and how it was checked."""
    checkpoint: Path
    onnx: Path
    source: str                      # the dataset whose faces checked it
    size: int
    parity_faces: int
    max_prob_difference: float
    int8: Path | None = None
    recipe: str = ""
    calibration_faces: int = 0
    test_faces: int = 0
    mae: dict[str, float] = field(default_factory=dict)   # test MAE per engine (with INT8 only)
    seconds: float = 0.0

    def describe(self) -> str:
        faces = f"{SOURCE_NAMES.get(self.source, self.source)}, {self.size}px"
        lines = [f"ONNX (FP32, dynamic batch and size): {self.onnx}",
                 f"parity on {self.parity_faces} real test faces ({faces}): max |p(ONNX Runtime) - p(PyTorch)| "
                 f"= {self.max_prob_difference:.1e} (tolerance {PARITY_TOLERANCE:.0e})"]
        if self.int8:
            lines.append(f"INT8 ({self.recipe}, calibrated on {self.calibration_faces} training faces): {self.int8}")
            lines += [f"test MAE, {engine}: {value:.4f}" for engine, value in self.mae.items()]
            lines.append(f"({self.test_faces:,} test faces, {faces})")
        return "\n".join(lines)


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, int8: bool = False,
                      recipe: Int8Recipe = DEFAULT_INT8, threads: int = 0, progress: bool = True) -> Export:
    """Export a trained checkpoint to ONNX (default ``model.onnx`` beside it) and keep the file
    only if ONNX Runtime's age distributions match PyTorch's on real test faces; with ``int8``,
    also write the INT8 graph (``model.int8.onnx``) and the test MAE of PyTorch, FP32 and INT8."""
    started = time.perf_counter()
    checkpoint = Path(checkpoint)
    model, cfg, state = load_model(checkpoint)
    faces, split = trained_faces(cfg, state, progress)
    out = Path(out) if out else checkpoint.with_name("model.onnx")
    check = spread_rows(faces, split.test if len(split.test) else split.val, PARITY_FACES)
    log.info("exporting %s to %s", checkpoint, out)
    with atomic_path(out) as tmp:  # published only once it has passed the parity check
        export_onnx(model, tmp, faces.size)
        session = ort_session(tmp, threads)
        difference = max_prob_difference(model, session, faces, check)
        if not difference <= PARITY_TOLERANCE:
            raise DeployError(f"the ONNX export of {checkpoint} differs from PyTorch by {difference:.2e} "
                              f"in probability (tolerance {PARITY_TOLERANCE:.0e}); nothing was written")
    result = Export(checkpoint, out, faces.source, faces.size, len(check), difference)
    if int8:
        result.int8 = out.with_name(f"{out.stem}.int8.onnx")
        result.recipe = recipe.label
        calibration = calibration_batch(faces, split)
        result.calibration_faces = len(calibration)
        log.info("quantising to INT8 (%s) into %s", recipe.label, result.int8)
        quantize_int8(out, result.int8, calibration, recipe)
        result.test_faces = len(split.test)
        sessions = {"ONNX Runtime FP32": session, "ONNX Runtime INT8": ort_session(result.int8, threads)}
        result.mae = mae_by_engine(model, sessions, faces, split.test, progress)
    result.seconds = time.perf_counter() - started
    return result


def mae_by_engine(model: nn.Module, sessions: dict[str, ort.InferenceSession], faces: FaceSet, rows: np.ndarray,
                  progress: bool = True) -> dict[str, float]:
    """MAE over the faces ``rows`` (no TTA) of PyTorch and of each named ONNX Runtime session."""
    ages = faces.ages[rows].astype(np.float64)
    probs = {"PyTorch FP32": predict_probs(model, faces.images, rows, progress=progress)}
    probs.update({name: onnx_probs(s, faces, rows, desc=name if progress else None) for name, s in sessions.items()})
    return {name: float(np.abs(expected_age(p.astype(np.float64)) - ages).mean()) for name, p in probs.items()}
