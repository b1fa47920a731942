"""Row-wise sharded NTU embedding tables over ``torch.distributed`` (gloo on CPU), for tables
larger than one process's memory. Launched by ``ntulm train-kge --nproc N`` or ``torchrun``.

Each of W ranks holds the rows ``id % W == rank`` of every table and their Adagrad state:
1/W of each table (TorchRec's row-wise sharding, with our own scoring, loss and negatives;
docs/scale.md says why not TorchRec or PyTorch-BigGraph). Every rank shuffles the edges and
draws the uniform negatives with the same seeded generator, so all ranks see the batch one
process would take; rank r scores its contiguous share of the batch's chunks. Per batch and
table:

1. the rank's distinct ids go to their owners, their rows come back (``all_to_all_single``);
2. :meth:`KGETrainer.score_chunks`, the single-process scoring and gradients, on those rows;
3. the gradients go back to the owners (``all_to_all_single``), which sum them per row over
   all ranks and take the row-wise Adagrad step; the relation gradient and loss are all-reduced.

So a step is the single-process step up to the order of float sums. Rows are initialised from
the same generator stream as one process (drawn in blocks, never the whole table at once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ntulm.distributed import peak_rss_mb
from ntulm.kge.data import GraphData
from ntulm.kge.embeddings import NTUEmbeddings
from ntulm.kge.evaluate import EdgeSet
from ntulm.kge.model import EmbeddingTable
from ntulm.kge.train import KGETrainer

log = logging.getLogger(__name__)

# Rows drawn per block at initialisation: a multiple of 16 keeps torch's CPU normal sampler on
# the same stream as one draw of the whole table (it fills 16 values per step).
INIT_BLOCK = 16 * 4096


@dataclass
class Route:
    """Where a rank's requested ids live: the exchange plan of one batch for one table."""

    order: torch.Tensor  # (k,) the requested ids sorted by owner rank
    send: list[int]  # ids requested from each rank
    recv: list[int]  # ids each rank requested from this one
    local: torch.Tensor  # (sum(recv),) local rows requested from this rank, by requester


class ShardedTable(EmbeddingTable):
    """This rank's rows of one table: global id ``i`` is local row ``i // W`` of rank ``i % W``.

    ``weight`` / ``state`` hold the local rows only, so the inherited ``step`` is the row-wise
    Adagrad step on local rows; ``global_rows`` is the size of the whole table."""

    def __init__(self, num_rows: int, dim: int, init_scale: float, generator: torch.Generator):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.global_rows = num_rows
        mine = torch.arange(self.rank, num_rows, self.world)
        self.weight = torch.empty(len(mine), dim)  # (≈ n / W, d)
        self.state = torch.zeros(len(mine))
        self.sent_bytes = 0  # payload this rank sent in all_to_all exchanges (ids, rows, grads)
        for s in range(0, num_rows, INIT_BLOCK):
            block = torch.randn(min(INIT_BLOCK, num_rows - s), dim, generator=generator)
            ids = mine[(mine >= s) & (mine < s + INIT_BLOCK)]
            self.weight[ids // self.world] = block[ids - s] * init_scale

    def route(self, ids: torch.Tensor) -> Route:
        """Exchange plan for the distinct global ``ids`` this rank needs (collective)."""
        owner = ids % self.world
        order = torch.argsort(owner, stable=True)
        send = torch.bincount(owner, minlength=self.world)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send)
        send_l, recv_l = send.tolist(), recv.tolist()
        asked = torch.empty(sum(recv_l), dtype=torch.long)
        dist.all_to_all_single(asked, ids[order].contiguous(), recv_l, send_l)
        self.sent_bytes += 8 * (self.world + len(ids))
        return Route(order, send_l, recv_l, asked // self.world)

    def fetch(self, route: Route) -> torch.Tensor:
        """Rows of the routed ids, in the order of the ids (collective): (k, d)."""
        got = torch.empty(sum(route.send), self.weight.shape[1])
        dist.all_to_all_single(got, self.weight[route.local], route.send, route.recv)
        self.sent_bytes += 4 * route.local.numel() * self.weight.shape[1]
        rows = torch.empty_like(got)
        rows[route.order] = got
        return rows

    def push_step(self, route: Route, grads: torch.Tensor, lr: float) -> None:
        """Send the gradients (k, d) of the routed ids to their owners; each owner sums what
        all ranks sent per row and takes one Adagrad step on those rows (collective)."""
        got = torch.empty(sum(route.recv), grads.shape[1])
        dist.all_to_all_single(got, grads[route.order].contiguous(), route.recv, route.send)
        self.sent_bytes += 4 * grads.numel()
        uniq, inv = torch.unique(route.local, return_inverse=True)
        summed = torch.zeros(len(uniq), grads.shape[1]).index_add_(0, inv, got)
        self.step(uniq, summed, lr)

    def gather_full(self) -> torch.Tensor | None:
        """The whole table (n, d) on rank 0 (None elsewhere), for the artifact (collective)."""
        width = -(-self.global_rows // self.world)  # rows of the largest shard
        mine = torch.zeros(width, self.weight.shape[1])
        mine[: self.weight.shape[0]] = self.weight
        parts = [torch.empty_like(mine) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(mine, parts, dst=0)
        if parts is None:
            return None
        full = torch.empty(self.global_rows, self.weight.shape[1])
        for r, part in enumerate(parts):
            n_r = len(range(r, self.global_rows, self.world))
            full[r :: self.world] = part[:n_r]
        return full


class ShardedKGETrainer(KGETrainer):
    """:class:`KGETrainer` with row-wise sharded tables; one instance per rank."""

    def _make_table(self, num_rows: int, gen: torch.Generator) -> ShardedTable:
        return ShardedTable(num_rows, self.config.dimension, self.config.init_scale, gen)

    @property
    def checkpoint_suffix(self) -> str:
        return f".rank{dist.get_rank()}-of-{dist.get_world_size()}"

    def train_batch(
        self, edges: EdgeSet, weight: torch.Tensor, batch: torch.Tensor, gen: torch.Generator
    ) -> float:
        """This rank's share of one global batch; the step is taken jointly (collectives)."""
        cfg = self.config
        B, U = cfg.num_batch_negs, cfg.num_uniform_negs
        rank, world = dist.get_rank(), dist.get_world_size()
        rel0 = self.relations[int(edges.rel[batch[0]])]
        lt, rt = self.tables[rel0.lhs], self.tables[rel0.rhs]
        # The same draws as one process (same generator, same order), then this rank's chunks.
        n_chunks = -(-len(batch) // B)
        uni_l = torch.randint(lt.global_rows, (n_chunks, U), generator=gen)
        uni_r = torch.randint(rt.global_rows, (n_chunks, U), generator=gen)
        c0, c1 = n_chunks * rank // world, n_chunks * (rank + 1) // world
        mine = batch[c0 * B : c1 * B]
        uni_l, uni_r = uni_l[c0:c1], uni_r[c0:c1]
        lhs, rhs, rel = edges.lhs[mine], edges.rhs[mine], edges.rel[mine]
        same = lt is rt
        ids_l = torch.unique(
            torch.cat([lhs, uni_l.reshape(-1)] + ([rhs, uni_r.reshape(-1)] if same else []))
        )
        route_l = lt.route(ids_l)
        rows_l = lt.fetch(route_l)  # (k_l, d): this rank's lhs rows, from all shards
        if same:
            ids_r, route_r, rows_r = ids_l, route_l, rows_l
        else:
            ids_r = torch.unique(torch.cat([rhs, uni_r.reshape(-1)]))
            route_r = rt.route(ids_r)
            rows_r = rt.fetch(route_r)
        grad_l = torch.zeros_like(rows_l)
        grad_r = grad_l if same else torch.zeros_like(rows_r)
        pos_l = lambda flat: torch.searchsorted(ids_l, flat)  # noqa: E731
        pos_r = lambda flat: torch.searchsorted(ids_r, flat)  # noqa: E731
        d_rel = torch.zeros_like(self.rel.weight)
        loss = 0.0
        if len(mine):
            loss = self.score_chunks(
                (lhs, rhs, rel, uni_l, uni_r, weight[mine]),
                (lambda flat: rows_l.index_select(0, pos_l(flat)), pos_l, grad_l),
                (lambda flat: rows_r.index_select(0, pos_r(flat)), pos_r, grad_r),
                d_rel,
            )
        lt.push_step(route_l, grad_l, cfg.lr)
        if not same:
            rt.push_step(route_r, grad_r, cfg.lr)
        total = torch.cat([d_rel.reshape(-1), torch.tensor([loss])])
        dist.all_reduce(total)
        self.rel.update(total[:-1].view_as(d_rel), cfg.effective_relation_lr)
        return float(total[-1])

    def embeddings(self, graph: GraphData) -> NTUEmbeddings | None:  # type: ignore[override]
        """The artifact's tables assembled on rank 0 (None on the other ranks, collective)."""
        full = {t: tab.gather_full() for t, tab in self.tables.items()}
        if dist.get_rank():
            return None
        return NTUEmbeddings(
            tables={t: a.numpy() for t, a in full.items()},  # type: ignore[union-attr]
            keys=graph.keys,
            relations={
                r.name: self.rel.weight[i].numpy().copy() for i, r in enumerate(self.relations)
            },
            user_handles=graph.user_handles,
            config=self.config.model_dump(mode="json"),
        )

    def shard_report(self) -> dict:
        """Rows held per rank and table, and each rank's peak RSS (gathered on every rank)."""
        mine = {
            "rank": dist.get_rank(),
            "rows": {t: tab.weight.shape[0] for t, tab in self.tables.items()},
            "table_rows": {t: tab.global_rows for t, tab in self.tables.items()},
            "peak_rss_mb": peak_rss_mb(),
            # all_to_all payload sent (own-shard rows included: they pass through the
            # collective too); the all-reduced relation gradient is R x d floats per step.
            "comm_mb": sum(tab.sent_bytes for tab in self.tables.values()) / 2**20,
        }
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, mine)
        return {"world_size": len(out), "ranks": out}
