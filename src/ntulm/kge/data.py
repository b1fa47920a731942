"""Reading the graph artifact (only through its files) and the seeded held-out split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ntulm.artifacts import read_json, require_done
from ntulm.errors import ArtifactError, ConfigError
from ntulm.kge.config import KGEConfig, RelationConfig
from ntulm.kge.evaluate import EdgeSet

log = logging.getLogger(__name__)


@dataclass
class GraphData:
    """Node vocabularies, the relations trained on and their edges as tensors."""

    keys: dict[str, list[str]]  # node type -> key of each node id
    user_handles: list[str | None]
    relations: list[RelationConfig]  # index = relation id in ``edges.rel``
    edges: EdgeSet
    weight: torch.Tensor  # (E,) float32

    def num_nodes(self, node_type: str) -> int:
        return len(self.keys[node_type])


def load_graph(graph_dir: str | Path, config: KGEConfig) -> GraphData:
    """Read a finished graph artifact; keep the relations named in ``config`` (default: all)."""
    graph_dir = require_done(graph_dir, "graph")
    present = read_json(graph_dir / "relations.json")
    by_name = {r["name"]: r for r in present}
    if config.relations:
        relations = list(config.relations)
        for rel in relations:
            if rel.name not in by_name:
                raise ConfigError(
                    f"relations: {rel.name!r} is not in {graph_dir}/relations.json "
                    f"(present: {sorted(by_name)})"
                )
            g = by_name[rel.name]
            if (rel.lhs, rel.rhs) != (g["lhs"], g["rhs"]):
                raise ConfigError(
                    f"relations: {rel.name!r} is {g['lhs']} -> {g['rhs']} in the graph, "
                    f"config says {rel.lhs} -> {rel.rhs}"
                )
    else:
        relations = [RelationConfig(name=r["name"], lhs=r["lhs"], rhs=r["rhs"]) for r in present]
    if not relations:
        raise ArtifactError(f"{graph_dir}: the graph has no relations")

    keys: dict[str, list[str]] = {}
    handles: list[str | None] = []
    for node_type in sorted({t for r in relations for t in (r.lhs, r.rhs)}):
        path = graph_dir / f"nodes_{node_type}.parquet"
        if not path.exists():
            raise ArtifactError(f"{path}: missing (nodes of type {node_type})")
        try:
            nodes = pq.read_table(path).sort_by("node_id")
        except (pa.ArrowException, OSError) as exc:
            raise ArtifactError(f"{path}: unreadable node table: {exc}") from None
        ids = nodes.column("node_id").to_numpy()
        if not np.array_equal(ids, np.arange(len(ids))):
            raise ArtifactError(f"{path}: node_id is not dense 0..n-1")
        keys[node_type] = nodes.column("key").to_pylist()
        if node_type == "user":
            if "handle" in nodes.column_names:
                handles = nodes.column("handle").to_pylist()
            else:
                handles = [None] * len(ids)

    path = graph_dir / "edges.parquet"
    if not path.exists():
        raise ArtifactError(f"{path}: missing")
    try:
        table = pq.read_table(path, columns=["lhs", "rel", "rhs", "weight"])
    except (pa.ArrowException, OSError) as exc:
        raise ArtifactError(f"{path}: unreadable edge table: {exc}") from None
    rel_index = {r.name: i for i, r in enumerate(relations)}
    names = pc.cast(table.column("rel"), "string")
    lookup = pc.index_in(names, value_set=pa.array(list(rel_index)))
    keep = pc.is_valid(lookup)
    table = table.filter(keep)
    rel_ids = pc.filter(lookup, keep).to_numpy(zero_copy_only=False).astype(np.int64)
    lhs = table.column("lhs").to_numpy().astype(np.int64)
    rhs = table.column("rhs").to_numpy().astype(np.int64)
    weight = table.column("weight").to_numpy().astype(np.float32)
    for r in relations:
        ri = rel_index[r.name]
        sel = rel_ids == ri
        for side, ids, t in (("lhs", lhs, r.lhs), ("rhs", rhs, r.rhs)):
            if sel.any() and (ids[sel].min() < 0 or ids[sel].max() >= len(keys[t])):
                raise ArtifactError(f"{path}: {r.name} {side} node id out of range for {t}")
    log.info(
        "graph %s: %s nodes, %d edges over %d relations",
        graph_dir,
        {t: len(k) for t, k in keys.items()},
        len(lhs),
        len(relations),
    )
    edges = EdgeSet(torch.from_numpy(lhs), torch.from_numpy(rel_ids), torch.from_numpy(rhs))
    return GraphData(keys, handles, relations, edges, torch.from_numpy(weight))


def split_edges(
    edges: EdgeSet, weight: torch.Tensor, fraction: float, seed: int
) -> tuple[EdgeSet, torch.Tensor, EdgeSet]:
    """A seeded ``fraction`` of the edges is held out: (train edges, train weights, test edges)."""
    n = len(edges)
    gen = torch.Generator().manual_seed(seed + 104729)
    perm = torch.randperm(n, generator=gen)
    n_test = int(round(n * fraction))
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values

    def take(idx: torch.Tensor) -> EdgeSet:
        return EdgeSet(edges.lhs[idx], edges.rel[idx], edges.rhs[idx])

    return take(train_idx), weight[train_idx], take(test_idx)


def loss_weights(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """Edge weight -> loss weight: ``none`` 1, ``loss`` the weight (PBG), ``log`` 1 + ln w."""
    if mode == "none":
        return torch.ones_like(weight)
    if mode == "loss":
        return weight.clone()
    return 1.0 + torch.log(weight.clamp(min=1.0))


def training_split(graph: GraphData, config: KGEConfig) -> tuple[EdgeSet, torch.Tensor, EdgeSet]:
    """The trainer's seeded split of ``graph`` (:func:`split_edges` with the config's
    ``eval_fraction`` and ``seed``): (train edges, their loss weights (:func:`loss_weights`),
    held-out edges). Every trainer and benchmark of the step uses this one split."""
    train, weight, test = split_edges(graph.edges, graph.weight, config.eval_fraction, config.seed)
    return train, loss_weights(weight, config.weights), test
