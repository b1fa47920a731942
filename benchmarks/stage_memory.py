"""Diagnostic: ``ntulm run`` with the resident memory, glibc heap and a ``gc`` census of Python
objects and torch storages printed after every stage (one ``CENSUS {json}`` line on stderr each).

    nice -n 15 python benchmarks/stage_memory.py CONFIG.yaml OUT_DIR [key=value ...]

Fields: ``VmRSS``/``VmHWM``/``RssAnon``/``RssFile`` (MB, ``/proc/self/status``); ``heap_used``,
``heap_free``, ``mmapped`` (MB, glibc ``mallinfo2``: bytes in use, free in the heap, in mmapped
chunks); ``arrow`` (MB held by pyarrow's pool); ``tensors``/``tensor_mb`` (torch tensors reachable
by ``gc`` and their storages' bytes); ``objs``/``top`` (objects tracked by ``gc``, commonest
types); ``rss_trim`` (RSS after ``malloc_trim``). Memory that RSS shows, ``heap_used`` counts and
no tensor or object accounts for is native memory held outside Python's reach. With
``isolate_stages=true`` the fine-tunes and encodings happen in workers: their peak is in each
``lm/*/train_result.json`` (``peak_rss_mb``).
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import logging
import sys
import time
import warnings

import torch

from ntulm.memory import trim
from ntulm.pipeline import run as R
from ntulm.pipeline.config import PipelineConfig


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                  "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


T0 = time.time()


def status() -> dict[str, int]:
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                d[k] = int(v.split()[0]) // 1024
    return d


def census(tag: str, full: bool = True) -> None:
    gc.collect()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    m = libc.mallinfo2()
    out = {"t": round(time.time() - T0), "tag": tag, **status(), "heap_used": m.uordblks >> 20,
           "heap_free": m.fordblks >> 20, "mmapped": m.hblkhd >> 20}  # fmt: skip
    import pyarrow as pa

    out["arrow"] = pa.total_allocated_bytes() >> 20
    if full:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        out.update(tensors=len(tensors), tensor_mb=sum(storages.values()) >> 20)
        types = collections.Counter(type(o).__name__ for o in gc.get_objects())
        out.update(objs=sum(types.values()), top=types.most_common(8))
    trim()
    out["rss_trim"] = status()["VmRSS"]
    print("CENSUS", json.dumps(out), file=sys.stderr, flush=True)


def instrument() -> None:
    for name in ("read_corpus", "build_tasks", "graph", "kge", "finetune", "evaluate"):
        real = getattr(R.Pipeline, name)

        def wrapped(self, *a, _real=real, _name=name, **k):  # noqa: ANN001, ANN202
            census(f"before {_name}", full=False)
            out = _real(self, *a, **k)
            census(f"after {_name}")
            return out

        setattr(R.Pipeline, name, wrapped)


if __name__ == "__main__":  # (the workers import this module again: spawn)
    logging.basicConfig(level=logging.WARNING)
    instrument()
    cfg = PipelineConfig.from_sources(sys.argv[1], sys.argv[3:])
    census("start")
    R.run_pipeline(cfg, sys.argv[2], progress=False)
    census("end")
