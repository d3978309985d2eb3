"""Process-wide settings that make PyTorch on the CPU several times faster on small machines.

glibc returns large freed blocks (activations of a batch: tens of MB) to the operating system
at once and maps them anew for the next batch; on virtual machines the page faults that follow
cost more than the convolutions (measured here: MobileNetV2 forward at 128 px, batch 64, on 2
cores went from about 30-70 to about 150-200 images/s). Raising glibc's mmap and trim thresholds
keeps that memory in the process for reuse. The environment variables carry the setting to
child processes (Jupyter kernels, workers); ``mallopt`` applies it to this already running one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

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
