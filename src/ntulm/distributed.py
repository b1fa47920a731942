"""Joining the process group that ``torchrun`` describes (its ``WORLD_SIZE``, ``RANK``,
``MASTER_ADDR`` environment): the seam the sharded KGE tables and data-parallel fine-tuning
share. gloo for CPU tensors, NCCL for CUDA ones."""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import threading
from pathlib import Path


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
        # Left alive at exit, gloo's threads can abort the interpreter's shutdown ("terminate
        # called without an active exception", exit code -6): leave the group first.
        atexit.register(_leave)
    return dist.get_rank(), dist.get_world_size()


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TreePeaks:
    """Samples /proc: each process's own peak RSS (VmHWM) in the trees under ``roots``, so the
    helper processes a rank starts (PBG: its servers and HOGWILD workers) are counted too."""

    def __init__(self, roots: list[int], interval: float = 0.2) -> None:
        self.roots, self.interval = roots, interval
        self.peak_kb: dict[int, dict[int, int]] = {r: {} for r in roots}  # root -> pid -> kB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreePeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for root in self.roots:
                stack = [root]
                while stack:
                    pid = stack.pop()
                    hwm = status_kb(pid, "VmHWM")
                    if hwm:
                        seen = self.peak_kb[root]
                        seen[pid] = max(seen.get(pid, 0), hwm)
                    stack += children(pid)
            self._stop.wait(self.interval)

    def report(self, root: int) -> dict:
        peaks = self.peak_kb[root]
        helpers = sorted((kb / 1024 for pid, kb in peaks.items() if pid != root), reverse=True)
        return {
            "trainer_peak_rss_mb": round(peaks.get(root, 0) / 1024, 1),
            "helper_processes": len(helpers),
            "helper_peak_rss_mb": [round(x, 1) for x in helpers],
        }


def status_kb(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` figure in kB (``VmHWM``: peak RSS); 0 if gone or absent."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc; empty once it has ended)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out
