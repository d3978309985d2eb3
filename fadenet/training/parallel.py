"""Data-parallel training with ``torch.distributed``: several processes, one model replica each,
gradients averaged by DistributedDataParallel after every backward pass.

Two ways in, one code path:
- ``torchrun --nproc_per_node=N -m fadenet train ...`` starts the processes itself (GPUs: one
  per process, NCCL; CPU: gloo);
- ``train.processes=N`` makes :func:`fadenet.training.train` spawn them on this machine, from a
  notebook or ``python -m fadenet train`` alike.

The global batch is ``train.batch_size``: each of N processes takes a disjoint 1/N of every
batch, so the learning rate means the same for any N. BatchNorm normalises each process's share
on its own (SyncBatchNorm exists for CUDA only); on 2 CPU cores that is 16 of the quick
profile's 32 images.
"""
from __future__ import annotations

import datetime
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..config import Config, ConfigError
from ..runtime import usable_cores

# Rank 0 may build the preprocessing cache while the others wait at a barrier: hours for AFAD-Full.
SETUP_TIMEOUT = datetime.timedelta(hours=3)


def process_count(cfg: Config) -> int:
    """Processes to train with: ``train.processes``, where 0 (auto) is one. On a 2-core AVX2 CPU
    one process of two threads trained as fast as two of one thread (``fadenet bench train``),
    and one process keeps BatchNorm's statistics over the whole batch; on GPUs torchrun starts
    one process per GPU."""
    n = cfg.train.processes or 1
    if cfg.train.batch_size % n:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} must divide evenly among train.processes={n}")
    return n


def threads_per_process(cfg: Config, processes: int) -> int:
    return cfg.train.threads or max(1, usable_cores() // processes)


def use_threads(cfg: Config, processes: int) -> None:
    """Torch's thread count for one of ``processes``: ``train.threads`` when given, a share of the
    cores for several processes; else torch's own default (a thread per core) stands."""
    if cfg.train.threads or processes > 1:
        torch.set_num_threads(threads_per_process(cfg, processes))


@dataclass
class Group:
    """This process's place among the training processes; with one process every method is a
    no-op, so the trainer reads the same either way."""
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over the processes."""
        value = value.detach().float().reshape(1).clone()
        if self.world > 1:
            dist.all_reduce(value)
            value /= self.world
        return float(value)

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def share(self, rows: np.ndarray) -> np.ndarray:
        """This process's share of ``rows`` (every world-th one), for :meth:`gather`."""
        return rows[self.rank::self.world]

    def gather(self, part: np.ndarray, total: int) -> np.ndarray:
        """Reassemble the per-process results of :meth:`share` in the rows' order."""
        if self.world == 1:
            return part
        parts: list = [None] * self.world
        dist.all_gather_object(parts, part)
        out = np.empty((total,) + part.shape[1:], part.dtype)
        for r, p in enumerate(parts):
            out[r::self.world] = p
        return out

    def broadcast_state(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's parameters and buffers (they drift apart in BatchNorm's
        running statistics, which each process updates from its own images)."""
        if self.world > 1:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)


def current_group() -> Group:
    """The group of a process that torchrun (or :func:`spawn`) started, joining it on first use."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=SETUP_TIMEOUT)
    if dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return Group()


def spawn(worker: Callable, processes: int, *args) -> None:
    """Run ``worker(*args)`` in ``processes`` new processes joined in a gloo group on this
    machine, and wait for them. A failure in any of them ends all and is raised here as a
    RuntimeError whose message ends with the failing process's traceback."""
    with tempfile.TemporaryDirectory(prefix="fadenet-group-") as tmp:
        context = start(worker, processes, Path(tmp), *args)
        try:
            while not context.join():  # returns each time one process ends
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            raise RuntimeError(f"a training process failed: {str(e).strip().splitlines()[-1]}\n{e}") from None


def start(worker: Callable, processes: int, folder: Path, *args) -> mp.ProcessContext:
    """Start ``worker(*args)`` in ``processes`` processes that meet through a file in ``folder``
    (which must outlive their start); ``join()`` the returned context to wait for them."""
    rendezvous = f"file://{folder / 'rendezvous'}"
    return mp.start_processes(_join_and_run, args=(processes, rendezvous, worker, args), nprocs=processes,
                              join=False, start_method="spawn")


def _join_and_run(rank: int, processes: int, rendezvous: str, worker: Callable, args: tuple) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # all processes are on this machine
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=processes, timeout=SETUP_TIMEOUT)
    try:
        worker(*args)
    finally:
        dist.destroy_process_group()
