"""What every benchmark shares (``python -m fadenet bench data|train|speed|faces``, chapters 03
and 07): the machine in words, contenders that take turns in interleaved rounds, and the table
printed and saved with its caption.

Contenders take turns, each round in a new order, so that a change of the machine's speed while
they are measured (another process, clock scaling) falls on all of them alike: their ratios stay
comparable when the absolute figures do not.
"""
from __future__ import annotations

import functools
import random
import time
from pathlib import Path
from typing import Callable, Hashable, TypeVar

from tqdm.auto import tqdm

from .runtime import cpu_features, cpu_info, usable_cores

Key = TypeVar("Key", bound=Hashable)
Result = TypeVar("Result")


@functools.cache  # the same all process long; every run record asks for it
def machine_text(threads: int | None = None) -> str:
    """The machine and software in words, for captions and run records: CPU, its features,
    cores (and the ``threads`` used, if given), GPU, torch and ONNX Runtime versions."""
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    used = f", {threads} thread{'s' * (threads != 1)}" if threads else ""
    try:
        import onnxruntime
        engines = f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    except ImportError:
        engines = f"torch {torch.__version__}"
    return f"{cpu_info()[0]} ({cpu_features()}), {usable_cores()} cores{used}; GPU: {gpu}; {engines}"


def interleaved(calls: dict[Key, Callable[[], Result]], rounds: int, seconds: float = float("inf"),
                min_rounds: int = 3, seed: int = 0, desc: str = "rounds",
                progress: bool = False) -> dict[Key, list[Result]]:
    """Each contender's results, one per round: every round calls each of ``calls`` once, in a new
    shuffled order. Once ``seconds`` have passed no new round starts, after ``min_rounds`` at least."""
    results: dict[Key, list[Result]] = {key: [] for key in calls}
    order, rng, started = list(calls), random.Random(seed), time.perf_counter()
    for r in tqdm(range(rounds), desc=desc, unit="round", disable=not progress, leave=False):
        if r >= min_rounds and time.perf_counter() - started > seconds:
            break
        rng.shuffle(order)
        for key in order:
            results[key].append(calls[key]())
    return results


def report(table, name: str, cfg, caption: str) -> Path:
    """Print ``table`` as markdown with its caption and save it as ``figures/tables/<name>``."""
    from .figures import markdown_table, save_table
    path = save_table(table, name, cfg, caption)
    print(markdown_table(table))
    print(f"\n{caption}\ntable: {path}")
    return path
