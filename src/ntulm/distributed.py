"""Joining the process group that ``torchrun`` describes (its ``WORLD_SIZE``, ``RANK``,
``MASTER_ADDR`` environment): the seam the sharded KGE tables and data-parallel fine-tuning
share. gloo for CPU tensors, NCCL for CUDA ones."""

from __future__ import annotations

import os
import resource


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def writer() -> bool:
    """Whether this process writes the artifact: a plain process, or rank 0 under torchrun (read
    from the environment, so it can be asked before the process group is joined)."""
    return os.environ.get("RANK", "0") == "0"


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def backend_for(device_type: str) -> str:
    """The collective backend for tensors on ``device_type``: NCCL for CUDA (one GPU per
    process), gloo for CPU. The NCCL path is untested here: no GPU was available to this
    project's tests (docs/scale.md)."""
    return "nccl" if device_type == "cuda" else "gloo"


def init(backend: str = "gloo") -> tuple[int, int]:
    """Join (once) the process group; returns (rank, world size)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
