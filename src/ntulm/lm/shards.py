"""``ntulm embed`` split over processes by input shard (embedding at scale).

Shard ``i`` of ``N`` is every ``N``-th post of the input stream, starting at the ``i``-th (in the
reader's order, after ``--limit``): balanced whatever the files, and the same split in every
process, so shards can run anywhere (one machine with ``--nproc N``, or ``--shard i/N`` under a
cluster scheduler: SLURM array jobs, Kubernetes indexed jobs, Spark tasks). Each process reads the
whole input and encodes only its own posts; reading is cheap next to the encoder.

Each shard writes ``part-<i>-of-<N>.parquet`` (``id``, ``embedding``, ``overlap``; the single
process layout) into the output directory, atomically; :func:`read_embeddings` reads a file or a
complete directory of parts. The union of the parts is the single-process output up to float
rounding: posts are batched by length within a shard, so their padding differs.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from ntulm.errors import ArtifactError, ConfigError
from ntulm.lm.config import resolve_device

log = logging.getLogger(__name__)
T = TypeVar("T")


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {spec!r}: expected i/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {spec!r}: needs 0 <= i < N")
    return index, count


def shard_of(items: Iterable[T], index: int, count: int) -> Iterator[T]:
    """Every ``count``-th item, starting at the ``index``-th."""
    return itertools.islice(items, index, None, count)


def shard_path(out_dir: str | Path, index: int, count: int) -> Path:
    return Path(out_dir) / f"part-{index:05d}-of-{count:05d}.parquet"


def embed_shard(
    model_dir: str,
    ntu_dir: str | None,
    posts: list[str],
    out_dir: str,
    index: int,
    count: int,
    *,
    reader: dict[str, Any] | None = None,
    limit: int = 0,
    threads: int | None = None,
    device: str = "cpu",
    **options: Any,
) -> dict[str, Any]:
    """Load the model onto ``device`` (auto, cpu, cuda), read ``posts`` and embed shard
    ``index`` of ``count`` into its part file. ``options`` go to
    :func:`~ntulm.lm.encode.embed_to_parquet`. Returns the shard's counts."""
    import torch

    from ntulm.artifacts import require_done
    from ntulm.lm.encode import embed_to_parquet
    from ntulm.lm.model import NTULM
    from ntulm.posts.config import ReaderConfig
    from ntulm.posts.readers import require_posts

    if threads:
        torch.set_num_threads(threads)
    ntu = None
    if ntu_dir is not None:
        from ntulm.kge import NTUEmbeddings

        ntu = NTUEmbeddings.load(require_done(ntu_dir, "kge", "--ntu"))
    model = NTULM.load(model_dir, ntu=ntu)
    model.to(resolve_device(device, "--device"))
    if options.get("concat_ntu") and model.ntu is None:
        raise ConfigError("--concat-ntu needs NTU embeddings (--ntu DIR)")
    # every shard reads every post; shard 0 keeps the quarantine
    read = ReaderConfig.model_validate(reader or {}).reader(
        Path(out_dir) / "rejected.jsonl" if index == 0 else None
    )
    stream = require_posts(read.iter_posts(posts, limit=limit), read, posts)  # none: an error
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    n = embed_to_parquet(
        model, shard_of(stream, index, count), shard_path(out_dir, index, count), **options
    )
    return {"shard": index, "posts": n, "read": read.report.read, "rejected": read.report.rejected}


def quarantine_beside(out: str | Path) -> Path:
    """Where ``ntulm embed`` quarantines rejected records: ``OUT.rejected.jsonl`` beside its
    Parquet file ``OUT.parquet`` (a directory of shards keeps its own ``rejected.jsonl``)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".parquet") + ".rejected.jsonl")


def embed_sharded(
    model_dir: str, ntu_dir: str | None, posts: list[str], out_dir: str, nproc: int, **kwargs: Any
) -> list[dict[str, Any]]:
    """All ``nproc`` shards in ``nproc`` processes on this machine, the cores split between them."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(nproc, mp_context=ctx) as pool:
        futures = [
            pool.submit(
                embed_shard, model_dir, ntu_dir, posts, out_dir, i, nproc, threads=threads, **kwargs
            )
            for i in range(nproc)
        ]
        return [f.result() for f in futures]


def read_embeddings(path: str | Path) -> pa.Table:
    """The embeddings of ``ntulm embed``: one Parquet file, or a directory holding every part of
    one sharded run (a missing part is an error naming it)."""
    path = Path(path)
    if path.is_file():
        return pq.read_table(path)
    parts = sorted(path.glob("part-*-of-*.parquet"))
    if not parts:
        raise ArtifactError(f"{path}: no embeddings (a .parquet file or part-*-of-*.parquet)")
    count = int(parts[0].stem.rsplit("-of-", 1)[1])
    missing = [
        str(shard_path(path, i, count))
        for i in range(count)
        if not shard_path(path, i, count).exists()
    ]
    if missing:
        raise ArtifactError(f"{path}: unfinished sharded run, missing {', '.join(missing)}")
    return pa.concat_tables(pq.read_table(shard_path(path, i, count)) for i in range(count))
