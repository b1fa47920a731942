"""Give freed heap memory back to the operating system.

PyTorch's CPU tensors come from the C library's ``malloc``. With length-grouped batches every
step allocates tensors of other shapes, and glibc keeps the freed chunks in its heaps instead of
returning them, so a long fine-tune's resident memory climbs by gigabytes although the live
tensors do not grow (``benchmarks/bench_memory.py`` measures it). :func:`trim` asks glibc to
release every free page (``malloc_trim(0)``); training calls it every ``TRIM_EVERY`` steps and the
pipeline between stages. It costs about a millisecond. Elsewhere than glibc (macOS, musl) it does
nothing. ``NTULM_MALLOC_TRIM=0`` turns it off (for the side-by-side benchmark).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

TRIM_EVERY = 50  # training steps between trims


@functools.cache
def _malloc_trim():  # noqa: ANN202 (a ctypes function or None)
    if os.environ.get("NTULM_MALLOC_TRIM", "1") == "0":
        return None
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim() -> bool:
    """Release free heap pages to the OS; True if the C library supports it (glibc)."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
