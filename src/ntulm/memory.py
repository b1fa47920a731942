"""Give freed heap memory back to the operating system.

PyTorch's CPU tensors come from the C library's ``malloc``. With length-grouped batches every
step allocates tensors of other shapes, and glibc keeps the freed chunks in its heaps instead of
returning them, so a long fine-tune's resident memory climbs by gigabytes although the live
tensors do not grow (``benchmarks/bench_memory.py`` measures it). :func:`trim` asks glibc to
release every free page (``malloc_trim(0)``); training calls it every ``TRIM_EVERY`` steps and the
pipeline between stages. It costs about a millisecond. Elsewhere than glibc (macOS, musl) it does
nothing. ``NTULM_MALLOC_TRIM=0`` turns it off (for the side-by-side benchmark).

Trimming every 50 steps still lets a fine-tune's heap climb about 1 GB between two trims
(``benchmarks/memory_trace.py``: the paper preset's fine-tune worker saw-tooths between 2.3 and
3.5 GB). Most of it is large buffers whose size changes every batch (the vocabulary logits of a
batch's masked positions, activations of each length group): glibc serves them from its heap once
its adaptive mmap threshold has risen to 32 MB, and a freed chunk of one size is rarely reused for
the next. :func:`tune_allocator` fixes the threshold (``MMAP_THRESHOLD``), so that larger buffers
are mapped on allocation and unmapped on free. The bytes in use grow too, about 2.5 MB a step
with no tensor or Python object to show for it: oneDNN keeps a primitive (with its buffers) for
every matmul shape it has seen, up to 1,024, and length-grouped batches and a varying number of
masked positions make new shapes every step. :func:`tune_allocator` caps that cache at
``ONEDNN_CACHE`` primitives, about one training step's worth. Measured on a 150-step fine-tune
(glibc ``mallinfo2`` and RSS at each trim, trims every 25 steps): 2,338 MB before a trim at
most, 1,932 MB with the threshold, 1,619 MB with both (runs too short to time). The threshold
alone cost 1.06x the wall time in two single 300-step runs (``bench_memory.py --modes
trim,mmap4m``).

Only processes that fine-tune call it, before their first tensor: the fine-tune workers of
``ntulm run`` (``lean_finetune: true``, the default, with ``isolate_stages``) and ``ntulm
finetune --lean-memory``. Its price is time: side by side (``benchmarks/bench_memory.py``, 300
steps, bf16, 2 repeats) the fine-tune's peak fell from 2,575 to 1,695 MB with identical weights,
and its wall time rose 1.20x. Applied to every process of the paper CPU preset, the fine-tune
workers peaked at 2.0-2.2 GB instead of 3.2-3.5 GB with identical metrics, but the evaluation
(encoding workers and the MLPs) took 32.0 min instead of 24.5 (runs one after the other on one
machine, not side by side), so the run's own process and its encoding workers keep the defaults.
Which of the two settings costs the time, oneDNN recompiling the kernels of shapes it has evicted
or mapped buffers faulted in again at each allocation, has not been separated. A user calling
:func:`ntulm.lm.train.finetune` from Python can call it first. ``NTULM_MALLOC_TUNE=0`` turns it
off; glibc's own ``MALLOC_MMAP_THRESHOLD_`` and a set ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

TRIM_EVERY = 50  # training steps between trims
MMAP_THRESHOLD = 4 << 20  # bytes: larger allocations are mmapped (benchmarks/bench_memory.py)
ONEDNN_CACHE = 32  # primitives oneDNN keeps (its default: 1,024)
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


@functools.cache
def _libc_function(name: str):  # noqa: ANN202 (a ctypes function or None)
    """``name`` from the C library, or None where it has none (not glibc: macOS, musl)."""
    lib = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(lib), name) if lib else None
    except (OSError, AttributeError):
        return None


@functools.cache
def _malloc_trim():  # noqa: ANN202 (a ctypes function or None)
    if os.environ.get("NTULM_MALLOC_TRIM", "1") == "0":
        return None
    fn = _libc_function("malloc_trim")
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


def tune_allocator(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc map allocations of ``threshold`` bytes or more on their own and unmap them when
    freed (``mallopt(M_MMAP_THRESHOLD)``), and cap oneDNN's primitive cache (read when torch
    first runs a oneDNN kernel); True if glibc's threshold was set. Call before the first tensor
    operation."""
    if os.environ.get("NTULM_MALLOC_TUNE", "1") == "0":
        return False
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHE))
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:  # not glibc: its allocator behaves otherwise
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
