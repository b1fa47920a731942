"""Run a command and sample the resident memory of its whole process tree (Linux ``/proc``)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):  # the process may end while it is looked at
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(pid: int) -> dict[int, int]:
    """RSS (kB) of ``pid`` and of each of its descendants, by pid."""
    out, stack = {}, [pid]
    while stack:
        p = stack.pop()
        out[p] = _rss_kb(p)
        stack += _children(p)
    return out


def tree_rss_mb(pid: int, per_process: dict[int, float] | None = None) -> float:
    """RSS of ``pid`` and its descendants (MB); ``per_process``: each one's peak so far, updated."""
    tree = tree_rss_kb(pid)
    if per_process is not None:
        for p, kb in tree.items():
            per_process[p] = max(per_process.get(p, 0.0), kb / 1024)
    return sum(tree.values()) / 1024


def run_measured(
    cmd: list[str], interval: float = 0.2, per_process: dict[int, float] | None = None, **kwargs
) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; return (completed process, wall seconds, peak RSS in MB of the process tree,
    summed over processes alive at the same sample). ``per_process`` (a dict) receives each
    process's own peak (MB) by pid, in the order they appeared."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_mb(proc.pid, per_process))
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    thread.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), wall, peak
