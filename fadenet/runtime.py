"""Facts about this machine and process-wide settings that make PyTorch on the CPU fast.

glibc returns large freed blocks (activations of a batch: tens of MB) to the operating system
at once and maps them anew for the next batch; on virtual machines the page faults that follow
cost more than the convolutions (measured here: MobileNetV2 forward at 128 px, batch 64, on 2
cores went from about 30-70 to about 150-200 images/s). Raising glibc's mmap and trim thresholds
keeps that memory in the process for reuse. The environment variables carry the setting to
child processes (Jupyter kernels, workers); ``mallopt`` applies it to this already running one.
The command line applies it when it starts (``fadenet.cli.main``) and the Makefile exports the
variables for every process it starts; importing the package changes nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
from pathlib import Path

_THRESHOLD = 2**31 - 1  # bytes; mallopt takes an int
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Apply the thresholds to this process and its children; False where libc is not glibc."""
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(_THRESHOLD))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(_THRESHOLD))
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))


@functools.cache
def cpu_info() -> tuple[str, set[str]]:
    """The CPU's model name and its instruction-set flags (empty where /proc/cpuinfo is absent)."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return name, flags


# Instruction sets that decide training and inference speed, in the order they are reported.
CPU_FEATURES = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"),
                ("avx512_bf16", "AVX-512-BF16"), ("amx_bf16", "AMX"))
# Without one of these oneDNN emulates bfloat16: 18x slower than FP32 for a FADE-Net training step
# on an AVX2-only EPYC. AVX-512-BF16 computes it natively, yet on the EPYC measured (fadenet bench
# train, chapter 03) a training step ran at 0.9-1.15x of FP32: no speed to trade precision for.
# AMX's bf16 tile units are what oneDNN accelerates bf16 convolutions and matrix products with.
FAST_BF16_FLAGS = {"amx_bf16"}
# 8-bit dot products in one instruction: what INT8 inference needs to beat FP32.
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def cpu_features(flags: set[str] | None = None) -> str:
    """e.g. 'AVX2 yes, AVX-512 no, AVX-512 VNNI no, AVX-VNNI no, AVX-512-BF16 no, AMX no', of this
    CPU's flags or of ``flags``."""
    flags = cpu_info()[1] if flags is None else flags
    return ", ".join(f"{label} {'yes' if flag in flags else 'no'}" for flag, label in CPU_FEATURES)


def fast_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX), where bf16 pays for its lost precision."""
    return bool(FAST_BF16_FLAGS & cpu_info()[1])


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def compile_model(module, **kwargs):
    """``torch.compile(module, **kwargs)``. Without CUDA, inductor's toolchain probe warns "No CUDA
    runtime is found" although a CPU compile needs none; that one logger is quietened there."""
    import logging
    import torch
    if not torch.cuda.is_available():
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(module, **kwargs)


class CompiledOrEager:
    """``compile_model(module)``, called like the module. Where compiling fails (torch.compile
    compiles at the first call), one warning, and that call and every later one run ``module``
    eagerly: a missing compiler toolchain costs speed, not the run."""

    def __init__(self, module, **kwargs):
        self.module, self.call, self.compiled, self._tried = module, compile_model(module, **kwargs), True, False

    def __call__(self, *args):
        if self._tried:
            return self.call(*args)
        self._tried = True
        try:
            return self.call(*args)
        except Exception as e:  # noqa: BLE001 - any compiler failure; the eager module is the fallback
            import logging
            logging.getLogger("fadenet.runtime").warning(
                "torch.compile failed (%s); running without it", str(e).strip().splitlines()[0][:200])
            self.call, self.compiled = self.module, False
            return self.call(*args)


def pick_device(name: str):
    """``train.device``: ``auto`` is the GPU where there is one, else the CPU."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def auto_precision(device) -> str:
    """bf16 on GPUs that support it and on CPUs with AMX, fp16 on older GPUs, fp32 on other CPUs:
    emulated bf16 (AVX2) is many times slower, and native AVX-512-BF16 was no faster than FP32
    (see FAST_BF16_FLAGS). Precision is part of a run's identity: it changes the numbers."""
    import torch
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if fast_bf16() else "fp32"
