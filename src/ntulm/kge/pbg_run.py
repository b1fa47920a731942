"""Running PyTorch-BigGraph for ``engine=pbg``: its rank processes, what each held, and the
artifact (``train_pbg``, called by :func:`ntulm.kge.train.train_kge`).

One machine: one rank runs in this process; N ranks are N spawned processes, each calling
``torchbiggraph.train.train(config, rank=r)`` (PBG's distributed mode, gloo, file://
rendezvous), which itself starts its servers (lock server on rank 0, a parameter server and a
partition server per rank) and HOGWILD workers. Several machines: each machine's ``ntulm
train-kge`` is one rank (``pbg_machines``, ``pbg_rank``, ``pbg_init_method``) on a shared ``--out``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import time
import uuid
import warnings
from pathlib import Path

import torch

from ntulm import distributed
from ntulm.artifacts import mark_done, read_json, unmark, write_json
from ntulm.kge.config import KGEConfig, RelationConfig
from ntulm.kge.data import GraphData, load_graph, split_edges
from ntulm.kge.embeddings import NTUEmbeddings
from ntulm.kge.pbg import (
    WORKDIR,
    PBGError,
    check_mappable,
    partitions_for,
    pbg_schema,
    prepare_workdir,
    read_checkpoint,
    read_stats,
    require_pbg,
    write_input,
)

log = logging.getLogger(__name__)


class _Buckets(logging.Handler):
    """Which buckets (lhs partition, rhs partition) this rank trained, and PBG's own time in
    its training loop, from PBG's log lines; its warnings and errors are passed on."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.buckets: list[list[int]] = []
        self.loop_seconds = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:  # PBG's INFO lines stay here, its warnings not
            log.log(record.levelno, "PyTorch-BigGraph: %s", msg)
        m = re.search(r"Swapping partitioned embeddings \S.*?\s(\( (\d+) , (\d+) \)|None)$", msg)
        if m and m.group(2) is not None:
            self.buckets.append([int(m.group(2)), int(m.group(3))])
        m = re.search(r"Processed \d+ edges in ([\d.]+) s", msg)
        if m:
            self.loop_seconds += float(m.group(1))


def allow_pbg_messages() -> None:
    """Let ``torch.load`` read PBG's own RPC messages again (torch >= 2.6).

    PBG 1.0 sends its lock-server messages (buckets, their stats) as ``torch.save`` pickles and
    reads them with a bare ``torch.load`` (torchbiggraph/rpc.py, ``_deserialize``, line 31).
    Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``, which refuses the
    classes in them: "Unsupported global: GLOBAL torchbiggraph.types.Bucket", and the first
    rank to ask the lock server for a bucket dies. Allowlisting exactly these three classes
    (torch's ``add_safe_globals``) keeps ``weights_only`` on for everything else, unlike
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``. Run in every PBG process (``subprocess_init``)."""
    from torchbiggraph.bucket_scheduling import BucketStats
    from torchbiggraph.stats import Stats
    from torchbiggraph.types import Bucket

    torch.serialization.add_safe_globals([Bucket, BucketStats, Stats])


def run_rank(schema: dict, rank: int, seed: int) -> dict:
    """One PBG trainer rank (``rank`` 0 alone when ``num_machines`` is 1); returns what it did."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchbiggraph.config import ConfigSchema
        from torchbiggraph.train import train
        from torchbiggraph.types import Rank
        from torchbiggraph.util import SubprocessInitializer

    pbg_log = logging.getLogger("torchbiggraph")
    handler = _Buckets()
    pbg_log.addHandler(handler)
    old_level, old_propagate, threads = pbg_log.level, pbg_log.propagate, torch.get_num_threads()
    pbg_log.setLevel(logging.INFO)
    pbg_log.propagate = False  # its per-bucket INFO lines go to our handler only
    torch.manual_seed(seed + rank)
    # PBG's helper processes are fresh interpreters: its import-time deprecation warnings
    # (pkg_resources, TypedStorage) would print once per process
    old_warn = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = "ignore::UserWarning"
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            allow_pbg_messages()
            init = SubprocessInitializer()  # run by each server process PBG spawns
            init.register(allow_pbg_messages)
            train(ConfigSchema.from_dict(schema), rank=Rank(rank), subprocess_init=init)
    finally:
        if old_warn is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = old_warn
        pbg_log.removeHandler(handler)
        pbg_log.setLevel(old_level)
        pbg_log.propagate = old_propagate
        torch.set_num_threads(threads)  # PBG's create_pool sets 1 in the trainer process
    return {
        "rank": rank,
        "seconds": time.perf_counter() - t0,
        "loop_seconds": handler.loop_seconds,
        "buckets": handler.buckets,
    }


def _rank_process(schema: dict, rank: int, seed: int, report: str) -> None:
    """Entry of a spawned rank process: run the rank, leave its report as JSON."""

    logging.basicConfig(level=logging.WARNING)
    result = run_rank(schema, rank, seed)
    # not ru_maxrss: Linux carries it over exec from the forking parent (this coordinator's
    # peak would show as the rank's); TreePeaks reads the rank's own VmHWM instead
    Path(report).write_text(json.dumps(result))


def run_here(schema: dict, rank: int, seed: int) -> dict:
    """:func:`run_rank` in this process, with the peak RSS of this process and its helpers."""
    with distributed.TreePeaks([os.getpid()]) as peaks:
        rep = run_rank(schema, rank, seed)
    return {**rep, **peaks.report(os.getpid())}


def run_local(schema: dict, ranks: int, seed: int, root: Path) -> list[dict]:
    """Train: in this process for one rank; else ``ranks`` spawned processes, one per rank, in
    PBG's distributed mode with a file:// rendezvous under ``root``. Per-rank reports."""
    import multiprocessing as mp

    if ranks == 1:
        return [run_here(schema, 0, seed)]
    rendezvous = root.resolve() / f"rendezvous-{uuid.uuid4().hex}"  # must not exist before the run
    schema = {**schema, "distributed_init_method": f"file://{rendezvous}"}
    schema["num_machines"], schema["num_partition_servers"] = ranks, -1
    ctx = mp.get_context("spawn")
    reports = [root / f"rank{r}.json" for r in range(ranks)]
    for f in reports:
        f.unlink(missing_ok=True)
    procs = [
        ctx.Process(target=_rank_process, args=(schema, r, seed, str(reports[r])), name=f"pbg{r}")
        for r in range(ranks)
    ]
    for p in procs:
        p.start()
    with distributed.TreePeaks([p.pid for p in procs]) as peaks:
        failed = _wait(procs)
    rendezvous.unlink(missing_ok=True)
    if failed:
        raise PBGError(
            f"PBG rank(s) {failed} failed (exit codes "
            f"{[procs[r].exitcode for r in failed]}); see their messages above"
        )
    out = []
    for r, p in enumerate(procs):
        rep = json.loads(reports[r].read_text())
        rep.update(peaks.report(p.pid))
        out.append(rep)
    return out


def _wait(procs: list) -> list[int]:
    """Wait for all ranks; if one fails, stop the others and every process PBG started under
    them (servers, workers: they would wait for the failed rank forever)."""
    while any(p.is_alive() for p in procs):
        failed = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
        if failed:
            stack, tree = [p.pid for p in procs if p.is_alive()], []
            while stack:
                pid = stack.pop()
                tree.append(pid)
                stack += distributed.children(pid)
            for sig in (signal.SIGTERM, signal.SIGKILL):  # PBG's servers may sit in a recv
                for pid in tree:
                    with contextlib.suppress(OSError):
                        os.kill(pid, sig)
                time.sleep(3)
            for p in procs:
                p.join()
            return failed
        time.sleep(0.2)
    return [r for r, p in enumerate(procs) if p.exitcode != 0]


def holdings(
    reports: list[dict],
    relations: list[RelationConfig],
    num_nodes: dict[str, int],
    p: int,
    ranks: int,
) -> list[dict]:
    """Per rank, in rows per table: what its trainer held at once (one bucket (i, j):
    partition i of the lhs types, partition j of the rhs types) and what its partition server
    kept between buckets (PBG's ``PartitionClient``: partition q on server ``q % ranks``).
    Several machines: ``reports`` holds this machine's rank only."""
    lhs_types = {r.lhs for r in relations}
    rhs_types = {r.rhs for r in relations}

    def rows(t: str, parts: set[int]) -> int:
        return sum(len(range(q, num_nodes[t], p)) for q in parts)

    def held(t: str, bucket: list[int]) -> set[int]:
        return ({bucket[0]} if t in lhs_types else set()) | (
            {bucket[1]} if t in rhs_types else set()
        )

    out = []
    for rep in reports:
        served = {q for q in range(p) if q % ranks == rep["rank"]} if ranks > 1 else set()
        out.append(
            {
                "rank": rep["rank"],
                "buckets_trained": rep["buckets"],
                "trainer_rows_at_once_max": {
                    t: max([rows(t, held(t, b)) for b in rep["buckets"]] or [0]) for t in num_nodes
                },
                "partition_server_partitions": sorted(served),
                "partition_server_rows": {t: rows(t, served) for t in num_nodes},
                "table_rows": dict(num_nodes),
            }
        )
    return out


def train_pbg(
    graph_dir: str | Path,
    out_dir: str | Path,
    config: KGEConfig,
    *,
    nproc: int = 1,
    resume: bool = False,
    evaluate: bool = True,
) -> tuple[NTUEmbeddings | None, dict]:
    """Train with PBG on a graph artifact and write OUR KGE artifact; (embeddings, metrics).

    ``nproc`` ranks on this machine, or this machine's rank of ``config.pbg_machines``; the
    artifact is written by rank 0 (the other machines get None)."""
    from ntulm.kge.train import evaluate_embeddings

    require_pbg()
    check_mappable(config)
    machines = config.pbg_machines
    if machines > 1 and nproc > 1:
        raise PBGError(
            "engine=pbg: --nproc N is one machine's ranks; with pbg_machines>1 "
            "run one `ntulm train-kge` per machine (docs/scale.md)"
        )
    ranks = max(nproc, machines)
    writer = config.pbg_rank == 0
    out = Path(out_dir)
    root = out / WORKDIR
    # PBG resumes whatever its checkpoint holds: refuse one of another config
    config_in, stamp = config, root / "ntulm_config.json"
    if writer and resume and stamp.exists() and read_json(stamp) != _resume_key(config):
        raise PBGError(
            f"{root / 'checkpoints'}: PBG checkpoints of a different config; cannot resume "
            "(delete them or run without --resume)"
        )
    if writer and machines > 1 and not resume and (root / "checkpoints").exists():
        raise PBGError(
            f"{root / 'checkpoints'}: PBG checkpoints of an earlier run; pass --resume to "
            "continue them or delete the directory (the other machines write there too)"
        )
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        unmark(out)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    graph = load_graph(graph_dir, config)
    train, _, test = split_edges(graph.edges, graph.weight, config.eval_fraction, config.seed)
    config, schedule = config.for_edges(len(train))
    num_nodes = {t: len(k) for t, k in graph.keys.items()}
    p = partitions_for(config, ranks)
    workers = config.pbg_workers or max(1, torch.get_num_threads() // nproc)
    # one machine: out/pbg/{input,checkpoints}; several: each machine writes its own copy of
    # the input (out/pbg/machine<r>/input), the checkpoints are shared (out/pbg/checkpoints)
    input_dir = root if machines == 1 else root / f"machine{config.pbg_rank}"
    schema = pbg_schema(
        config, graph.relations, sorted(num_nodes), p, input_dir, machines=machines,
        init_method=config.pbg_init_method, workers=workers,
    )  # fmt: skip
    schema["checkpoint_path"] = str(root / "checkpoints")
    if machines == 1:
        prepare_workdir(root, resume)
    root.mkdir(parents=True, exist_ok=True)
    if writer:
        write_json(stamp, _resume_key(config_in))
    shutil.rmtree(input_dir / "input", ignore_errors=True)  # rewritten: the same split
    buckets = write_input(train, num_nodes, p, input_dir)
    if writer:
        write_json(out / "config.json", config.model_dump(mode="json"))
    log.info(
        "PBG: %d training edges, %d held out, %d partitions, %d rank(s), %d worker(s) each",
        len(train), len(test), p, ranks, workers,
    )  # fmt: skip
    t0 = time.perf_counter()
    if machines > 1:
        reports = [run_here(schema, config.pbg_rank, config.seed)]
    else:
        reports = run_local(schema, nproc, config.seed, root)
    wall = time.perf_counter() - t0
    if not writer:
        return None, {"train": {"seconds": wall, "rank": reports[0]}}
    tables, rvec = read_checkpoint(root, num_nodes, p, graph.relations, config.dimension)
    loss = read_stats(root)
    seconds = max(r["seconds"] for r in reports)
    metrics: dict = {
        "train": {
            "engine": "pbg",
            "edges": len(train),
            "held_out_edges": len(test),
            "epochs": config.num_epochs,
            "loss_per_epoch": loss,
            "seconds": seconds,
            "edges_per_s": len(train) * config.num_epochs / seconds if seconds else None,
            "pbg_loop_seconds": [r["loop_seconds"] for r in reports],
            "compute_dtype": "float32",
            "threads": 1,  # PBG's HOGWILD workers run one torch thread each
            "pbg_workers_per_rank": workers,
            **schedule,
            "peak_rss_mb": distributed.peak_rss_mb(),
        },
        "pbg": {
            "partitions": p,
            "ranks": ranks,
            "edges_per_bucket": buckets,
            "schema": {k: v for k, v in schema.items() if not k.endswith(("_path", "_paths"))},
            "holdings": holdings(reports, graph.relations, num_nodes, p, ranks),
            "processes": [
                {
                    k: r.get(k)
                    for k in (
                        "rank",
                        "trainer_peak_rss_mb",
                        "helper_processes",
                        "helper_peak_rss_mb",
                    )
                }
                for r in reports
            ],  # fmt: skip
        },
    }
    emb = _embeddings(tables, rvec, graph, config)
    if evaluate and len(test):
        metrics.update(evaluate_embeddings(emb, graph, test, config))
    emb.save(out, done=False)
    write_json(out / "metrics.json", metrics)
    mark_done(out, "kge", config.model_dump(mode="json"), graph=str(graph_dir))
    return emb, metrics


def _resume_key(config: KGEConfig) -> dict:
    """The config a PBG checkpoint belongs to (less what differs between machines)."""
    data = config.model_dump(mode="json")
    for key in ("pbg_rank", "pbg_init_method", "pbg_workers", "num_threads"):
        data.pop(key, None)
    return data


def _embeddings(
    tables: dict[str, torch.Tensor], rvec: torch.Tensor, graph: GraphData, config: KGEConfig
) -> NTUEmbeddings:
    return NTUEmbeddings(
        tables={t: a.numpy() for t, a in sorted(tables.items())},
        keys=graph.keys,
        relations={r.name: rvec[i].numpy().copy() for i, r in enumerate(graph.relations)},
        user_handles=graph.user_handles,
        config=config.model_dump(mode="json"),
    )
