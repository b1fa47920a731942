"""Worker processes that die with their parent.

A reader pool's workers (``posts/table.py``, ``posts/fast_v1.py``) must not outlive the command
that started them: after a ``kill -9`` of ``ntulm build-graph`` they would go on writing parts into
a directory nobody owns. :func:`worker_pool` gives a ``spawn`` process pool whose workers run
:func:`die_with_parent` first:

- on Linux the kernel sends them ``SIGKILL`` when the parent dies (``prctl(PR_SET_PDEATHSIG)``);
- everywhere, a daemon thread checks once a second that the parent is still the one that started
  them (a dead parent's children are re-parented) and ends the process if not.

:func:`run_isolated` runs one call in such a worker and returns its result: ``ntulm run`` trains
the NTU embeddings and each model, and encodes with each model, that way, so that what a stage
allocates goes back to the OS when it ends (``docs/evaluate.md``, memory).

``PR_SET_PDEATHSIG`` fires when the *thread* that created the worker ends; the pools here are
created and used by one thread, which outlives them (``with`` blocks, generators drained in
place).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

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


def worker_pool(workers: int, log_level: int | None = None) -> ProcessPoolExecutor:
    """A process pool (``spawn``: no fork of a process that may hold threads) whose workers die
    with this process; with ``log_level``, they also log at that level (as ``run_isolated``'s)."""
    init, args = (
        (die_with_parent, (os.getpid(),))
        if log_level is None
        else (_init_isolated, (os.getpid(), log_level))
    )
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=init, initargs=args
    )


def _init_isolated(parent: int, level: int) -> None:
    die_with_parent(parent)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def run_isolated(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a fresh worker process (``spawn``) that dies with this one; its result.

    What the call allocates (a model, its optimizer, the allocator's fragmented heap, torch's
    caches) ends with the worker and goes back to the OS, so a long run that calls this once per
    stage does not grow (``ntulm run``'s fine-tunes and encodings). ``fn`` and its arguments and
    result cross the process boundary, so they must be picklable (a module-level function,
    plain data). The worker logs at this process's root level; an exception in ``fn`` is raised
    here."""
    with worker_pool(1, log_level=logging.getLogger().getEffectiveLevel()) as pool:
        return pool.submit(fn, *args).result()


_DONE = object()


def prefetched(items: Iterator[T], depth: int = 1, name: str = "prefetch") -> Iterator[T]:
    """``items``, produced by a daemon thread up to ``depth`` items ahead of the consumer, so that
    what makes an item (reading, tokenizing: code that releases the GIL, or runs while the
    consumer sits in native code that does) overlaps with what the consumer does with the last
    one (``lm/encode.py``: the encoder). The same items in the same order; an exception raised
    making an item is raised here, in the consumer, with its traceback. When the consumer stops
    early (``break``, an exception, ``close()``), the thread stops after the item it is making
    and closes ``items`` in its own thread (so a reader's ``finally`` blocks run), and this
    generator waits for it."""
    out: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((_DONE, exc))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        put((_DONE, None))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, exc = out.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        thread.join()
