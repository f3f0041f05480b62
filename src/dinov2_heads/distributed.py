"""Helpers for ``torchrun``: rank and world size, sharding, gathering and DDP wrapping.

Everything here also works in a plain single process (rank 0 of a world of 1), so the same
training script runs with ``python train.py`` and ``torchrun --nproc-per-node 2 train.py``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "barrier",
    "gather_objects",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "rank",
    "shard_range",
    "world_size",
    "wrap_ddp",
]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def is_distributed() -> bool:
    """``True`` when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: from the process group, else ``RANK`` (set by torchrun), else 0.

    Without a process group and with ``WORLD_SIZE`` unset or 1 it is 0, as
    :func:`init_distributed` returns then, whatever ``RANK`` says.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    value = _env_int("RANK", 0)
    world = world_size()
    if world == 1:
        # A single process is the only rank: a stale RANK must not make it skip rank-0 work.
        return 0
    if not 0 <= value < world:
        raise ValueError(
            f"environment variable RANK={value} is outside [0, WORLD_SIZE={world}); launch "
            "with torchrun, which sets both, or give each process a RANK below WORLD_SIZE"
        )
    return value


def world_size() -> int:
    """Number of processes: from the process group, else ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    value = _env_int("WORLD_SIZE", 1)
    if value < 1:
        raise ValueError(
            f"environment variable WORLD_SIZE must be >= 1, got {value}; unset it to run a "
            "single process"
        )
    return value


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``, set by torchrun), else 0."""
    return _env_int("LOCAL_RANK", 0)


def is_main_process() -> bool:
    """``True`` on rank 0 (the process that logs, shows progress and writes shared files)."""
    return rank() == 0


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Does nothing (and returns ``(0, 1)``) when ``WORLD_SIZE`` is unset or 1, or when a group is
    already initialised (then its rank and size are returned). Under torchrun on CUDA machines
    it also selects the GPU ``LOCAL_RANK``.

    Args:
        backend: ``"nccl"``, ``"gloo"``...; by default ``"nccl"`` when CUDA is available, else
            ``"gloo"`` (the CPU backend).

    Returns:
        (rank, world size).

    Raises:
        ValueError: If ``WORLD_SIZE`` is below 1 or ``RANK`` is outside ``[0, WORLD_SIZE)``
            (before waiting for any peer), or if ``nccl`` is asked for without a CUDA device
            for ``LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if world_size() == 1:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError(
            "WORLD_SIZE > 1 asks for distributed training but this PyTorch build has no "
            "torch.distributed support"
        )
    # A RANK outside the world would wait for its peers until the rendezvous times out.
    rank()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        _select_gpu(local_rank())
    dist.init_process_group(backend=backend)
    logger.info(
        "joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend
    )
    return dist.get_rank(), dist.get_world_size()


def _select_gpu(index: int) -> None:
    if not torch.cuda.is_available():
        raise ValueError(
            "the nccl backend needs CUDA GPUs, and none is available; use backend='gloo' "
            "(or leave backend unset) to run the processes on the CPU"
        )
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ValueError(
            f"LOCAL_RANK={index} has no GPU: this machine has {count} CUDA device(s); start "
            f"at most {count} processes per machine (torchrun --nproc-per-node {count})"
        )
    torch.cuda.set_device(index)


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def shard_range(count: int, shard: int, shards: int) -> range:
    """The contiguous part of ``range(count)`` that shard ``shard`` of ``shards`` owns.

    The first ``count % shards`` shards hold one item more; concatenating the shards in order
    gives ``range(count)`` back, each index exactly once.
    """
    if shards < 1 or not 0 <= shard < shards:
        raise ValueError(f"shard must be in [0, {shards}) with shards >= 1, got {shard}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    base, extra = divmod(count, shards)
    start = shard * base + min(shard, extra)
    return range(start, start + base + (1 if shard < extra else 0))


def gather_objects(value: T) -> list[T]:
    """Every process's ``value``, in rank order (``[value]`` in a single process).

    Uses ``all_gather_object``, so ``value`` is pickled: fine for metrics and modest tensors,
    not for large arrays.
    """
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def wrap_ddp(module: nn.Module) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when distributed, else unchanged.

    On CUDA, the module's device is used as the DDP device. DDP broadcasts rank 0's parameters
    at construction, so every process starts from the same weights.
    """
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    parameter = next(module.parameters(), None)
    if parameter is not None and parameter.device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[parameter.device])
    return DistributedDataParallel(module)
