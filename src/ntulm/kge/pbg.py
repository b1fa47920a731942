"""NTU embeddings trained by PyTorch-BigGraph (``engine=pbg``): an established partitioned,
distributed engine behind the same seam as our trainer (same split, same artifact).

``ntulm train-kge --engine pbg [--nproc N] [pbg_partitions=P]``:

1. the training edges of OUR seeded split (:func:`~ntulm.kge.data.split_edges`) become PBG's
   input: entity counts per partition and one HDF5 edge bucket per (lhs partition, rhs
   partition), written through PBG's own storage classes. Node ``i`` of a type is offset
   ``i // P`` of partition ``i % P`` (both node types are partitioned);
2. PBG trains, ``translation`` operator, ``dot`` comparator, no global embedding: one process
   (``num_machines=1``) or N trainer ranks in PBG's distributed mode (``num_machines=N``, gloo,
   one process per rank calling ``torchbiggraph.train.train(config, rank=r)``): a lock server on
   rank 0 hands out buckets so that no two ranks hold the same partition; each rank runs a
   partition server (the partitions between buckets: partition ``p`` lives on rank ``p % N``)
   and a parameter server (the relation vectors, synchronised asynchronously);
3. PBG's checkpoint is read back into OUR artifact (:class:`NTUEmbeddings`, atomically, DONE.json
   last) and scored by OUR link prediction on the held-out edges.

:func:`pbg_schema` maps our config onto PBG's and refuses, naming the field, what PBG cannot do.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from pathlib import Path

import torch

from ntulm.errors import ConfigError, NTULMError
from ntulm.kge.config import KGEConfig, RelationConfig
from ntulm.kge.evaluate import EdgeSet

log = logging.getLogger(__name__)

INSTALL = "pip install torchbiggraph 'setuptools<81'  (the ntulm[pbg] extra)"
WORKDIR = "pbg"  # under the output directory: PBG's input and checkpoints


class PBGError(NTULMError):
    """PyTorch-BigGraph is missing, cannot run, or one of its ranks failed."""


def require_pbg() -> None:
    """Import PBG once, or a clear error with the install line (not a traceback)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its pkg_resources / attrs deprecation warnings
            import torchbiggraph.train  # noqa: F401
    except ImportError as exc:
        raise PBGError(
            f"engine=pbg needs PyTorch-BigGraph, which cannot be imported ({exc}); {INSTALL}"
        ) from None


def check_mappable(cfg: KGEConfig) -> None:
    """Refuse, naming the field, the settings PBG 1.0 has no equivalent for."""
    problems = []
    if cfg.loss_fn == "logistic" and cfg.neg_reduction != "mean":
        problems.append(
            "neg_reduction=sum: PBG's logistic loss averages the negatives' terms (mean) only"
        )
    if cfg.weights != "none":
        problems.append(f"weights={cfg.weights}: PBG 1.0 edges carry no weights")
    if cfg.compute_dtype == "bfloat16":
        problems.append("compute_dtype=bfloat16: PBG trains in float32 only (use auto or float32)")
    if cfg.pbg_machines > 1 and not cfg.pbg_init_method:
        problems.append("pbg_machines>1 needs pbg_init_method (e.g. tcp://HOST:PORT)")
    if cfg.pbg_rank >= cfg.pbg_machines:
        problems.append(f"pbg_rank={cfg.pbg_rank} is not below pbg_machines={cfg.pbg_machines}")
    if problems:
        raise ConfigError("engine=pbg cannot map: " + "; ".join(problems))


def partitions_for(cfg: KGEConfig, ranks: int) -> int:
    """P: ``pbg_partitions``, or by default 1 for one process and the number of ranks else."""
    p = cfg.pbg_partitions or ranks
    if p < ranks:
        raise ConfigError(
            f"pbg_partitions={p} < {ranks} ranks: PBG's lock server gives no two ranks the same "
            f"partition, so a rank would have nothing to train; use pbg_partitions>={ranks}"
        )
    return p


def pbg_schema(
    cfg: KGEConfig,
    relations: list[RelationConfig],
    node_types: list[str],
    partitions: int,
    workdir: Path,
    *,
    machines: int = 1,
    init_method: str | None = None,
    workers: int = 1,
) -> dict:
    """PBG's config (``ConfigSchema.from_dict`` input) equal to ``cfg``, field by field.

    Not mapped (documented in docs/kge.md): ``seed`` (PBG draws from torch's global generator,
    seeded per rank, and HOGWILD is not deterministic), ``checkpoint_every`` (PBG checkpoints
    every epoch), ``eval_*`` (our evaluation, after training), ``num_threads`` (PBG runs
    ``workers`` one-thread HOGWILD processes)."""
    check_mappable(cfg)
    schema = {
        "entities": {t: {"num_partitions": partitions} for t in node_types},
        "relations": [
            {"name": r.name, "lhs": r.lhs, "rhs": r.rhs, "operator": r.operator} for r in relations
        ],
        "dimension": cfg.dimension,
        "comparator": "dot",
        "global_emb": False,
        "bias": False,
        "loss_fn": cfg.loss_fn,
        "lr": cfg.lr,
        "relation_lr": cfg.effective_relation_lr,
        "init_scale": cfg.init_scale,
        "num_epochs": cfg.num_epochs,
        "batch_size": cfg.batch_size,
        "num_batch_negs": cfg.num_batch_negs,
        "num_uniform_negs": cfg.num_uniform_negs,
        "eval_fraction": 0.0,  # held-out edges are ours, scored by kge/evaluate.py
        "workers": workers,
        "hogwild_delay": 0.0,
        "entity_path": str(workdir / "input"),
        "edge_paths": [str(workdir / "input" / "edges")],
        "checkpoint_path": str(workdir / "checkpoints"),
        "num_machines": machines,
    }
    if machines > 1:
        schema["distributed_init_method"] = init_method
        schema["num_partition_servers"] = -1  # every trainer rank is a partition server
    return schema


def write_input(train: EdgeSet, num_nodes: dict[str, int], p: int, root: Path) -> dict[str, int]:
    """PBG's input under ``root/input``: entity counts and the (lhs, rhs) partition buckets.

    Returns the edges per bucket as ``{"i,j": n}``."""
    from torchbiggraph.edgelist import EdgeList
    from torchbiggraph.entitylist import EntityList
    from torchbiggraph.graph_storages import FileEdgeStorage, FileEntityStorage

    ents = FileEntityStorage(str(root / "input"))
    ents.prepare()
    for t, n in num_nodes.items():
        for part in range(p):
            ents.save_count(t, part, len(range(part, n, p)))
    store = FileEdgeStorage(str(root / "input" / "edges"))
    store.prepare()
    lp, rp = train.lhs % p, train.rhs % p
    sizes = {}
    for i in range(p):
        for j in range(p):
            sel = ((lp == i) & (rp == j)).nonzero().squeeze(1)
            with warnings.catch_warnings():  # PBG's TypedStorage deprecation warning
                warnings.simplefilter("ignore", UserWarning)
                store.save_edges(
                    i,
                    j,
                    EdgeList(
                        EntityList.from_tensor(train.lhs[sel] // p),
                        EntityList.from_tensor(train.rhs[sel] // p),
                        train.rel[sel],
                    ),
                )
            sizes[f"{i},{j}"] = len(sel)
    return sizes


def read_checkpoint(
    root: Path, num_nodes: dict[str, int], p: int, relations: list[RelationConfig], dim: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Full tables (partitions interleaved back to node ids) and the relation vectors (R, d)."""
    from torchbiggraph.checkpoint_manager import CheckpointManager

    cm = CheckpointManager(str(root / "checkpoints"))
    tables = {}
    for t, n in num_nodes.items():
        full = torch.empty(n, dim)
        for part in range(p):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                full[part::p] = cm.read(t, part)[0].float()
        tables[t] = full
    state, _ = cm.read_model()
    rvec = torch.zeros(len(relations), dim)
    for key, val in (state or {}).items():
        m = re.search(r"rhs_operators\.(\d+)\.translation$", key)
        if m:
            rvec[int(m.group(1))] = val.float()
    cm.close()
    return tables, rvec


def read_stats(root: Path) -> list[float]:
    """Mean training loss per edge and epoch from PBG's training_stats.json."""
    from torchbiggraph.checkpoint_manager import CheckpointManager

    per_epoch: dict[int, list[float]] = {}
    for rec in CheckpointManager(str(root / "checkpoints")).maybe_read_stats():
        st = rec.get("stats", {})
        loss, count = st.get("metrics", {}).get("loss"), st.get("count", 0)
        if loss is not None and count:
            per_epoch.setdefault(rec.get("epoch_idx", 0), []).extend([loss * count, count])
    return [sum(v[::2]) / sum(v[1::2]) for _, v in sorted(per_epoch.items())]


def prepare_workdir(root: Path, resume: bool) -> None:
    """A fresh PBG working directory, or the old one kept for PBG's own resume."""
    if root.exists() and not resume:
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
