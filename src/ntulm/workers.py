"""Worker processes that die with their parent.

A reader pool's workers (``posts/table.py``, ``posts/fast_v1.py``) must not outlive the command
that started them: after a ``kill -9`` of ``ntulm build-graph`` they would go on writing parts into
a directory nobody owns. :func:`worker_pool` gives a ``spawn`` process pool whose workers run
:func:`die_with_parent` first:

- on Linux the kernel sends them ``SIGKILL`` when the parent dies (``prctl(PR_SET_PDEATHSIG)``);
- everywhere, a daemon thread checks once a second that the parent is still the one that started
  them (a dead parent's children are re-parented) and ends the process if not.

``PR_SET_PDEATHSIG`` fires when the *thread* that created the worker ends; the pools here are
created and used by one thread, which outlives them (``with`` blocks, generators drained in
place).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Pool initializer: end this process when ``parent`` (the pid that started it) dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watcher below still works
            pass
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="ntulm-parent-watch", daemon=True).start()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool (``spawn``: no fork of a process that may hold threads) whose workers die
    with this process."""
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
