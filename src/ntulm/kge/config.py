"""Config of the NTU embedding stage, in PyTorch-BigGraph's vocabulary.

Defaults are the paper's (appendix B): dimension 200, lr 0.05, 10 epochs, batch size 100,000,
500 batch negatives and 500 uniform negatives. Override on the command line, e.g.
``ntulm train-kge ... dimension=64 num_epochs=3 relations='[{name: authored}]'``.
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, model_serializer, model_validator

from ntulm.config import StageConfig

log = logging.getLogger(__name__)


class RelationConfig(StageConfig):
    """One relation: ``f(u, r, v) = u·(v + r)`` with the ``translation`` operator (paper Eq. 1).

    As in PyTorch-BigGraph the operator is applied to the right-hand side; ``none`` scores u·v."""

    name: str = Field(description="relation name as in the graph's relations.json")
    lhs: str = Field("user", description="node type of the left-hand side")
    rhs: str = Field("hashtag", description="node type of the right-hand side")
    operator: Literal["translation", "none"] = Field(
        "translation", description="operator applied to the rhs embedding"
    )


class KGEConfig(StageConfig):
    """Training config of the TwHIN-style NTU embeddings (paper §3.1)."""

    dimension: int = Field(200, ge=1, description="embedding dimension")
    lr: float = Field(0.05, gt=0, description="Adagrad learning rate of the node embeddings")
    relation_lr: float | None = Field(
        None, gt=0, description="Adagrad learning rate of the relation vectors (default: lr)"
    )
    num_epochs: int = Field(10, ge=1, description="passes over the training edges")
    batch_size: int = Field(100_000, ge=1, description="edges per optimizer step")
    num_batch_negs: int = Field(
        500, ge=1, description="chunk size: edges of a chunk serve as each other's negatives"
    )
    num_uniform_negs: int = Field(
        500, ge=0, description="nodes drawn uniformly per chunk and side as extra negatives"
    )
    loss_fn: Literal["logistic", "softmax"] = Field(
        "logistic", description="logistic = paper Eq. 2; softmax = PyTorch-BigGraph's softmax loss"
    )
    neg_reduction: Literal["sum", "mean"] = Field(
        "mean",
        description="logistic loss: average the negatives' terms (PBG, TwHIN; default) or sum "
        "them (Eq. 2 literally; with 1000 negatives per edge the negatives swamp the positive)",
    )
    init_scale: float = Field(1e-3, gt=0, description="std of the normal initialisation")
    relations: list[RelationConfig] = Field(
        [],  # pydantic copies mutable defaults; a literal default shows in --help
        description="relations to train on (default: all relations of the graph, translation)",
    )
    weights: Literal["none", "loss", "log"] = Field(
        "none",
        description="edge weight use: none (each distinct edge once), loss (loss x weight, as "
        "PBG), log (loss x (1 + ln weight))",
    )
    eval_fraction: float = Field(
        0.02, ge=0, lt=1, description="fraction of edges held out for link prediction"
    )
    eval_max_edges: int = Field(
        5000, ge=0, description="held-out edges ranked per relation (a seeded sample; 0 = all)"
    )
    eval_num_candidates: int = Field(
        0,
        ge=0,
        description="rank against all nodes of the type (0) or this many uniformly sampled ones",
    )
    compute_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="dtype of the score matmuls (tables and optimizer stay float32); "
        "auto = bfloat16 where the CPU supports it natively",
    )
    num_threads: int = Field(0, ge=0, description="torch threads (0 = leave torch's default)")
    seed: int = Field(0, description="seed of init, split, shuffling and negatives")
    checkpoint_every: int = Field(1, ge=1, description="checkpoint every N epochs")
    min_steps: int = Field(
        100,
        ge=0,
        description="small graphs: fewer optimizer steps in all than this (num_epochs x "
        "batches per epoch) is warned about, or with small_graph=scale the batch shrinks to "
        "give them (0: no check)",
    )
    small_graph: Literal["warn", "scale"] = Field(
        "warn",
        description="when batch_size leaves fewer than min_steps steps: 'warn' (train as "
        "configured; the paper's batch of 100,000 on 5,000 edges is 10 steps in all) or "
        "'scale' (batch_size = train edges x num_epochs / min_steps, at least num_batch_negs)",
    )

    engine: Literal["ntulm", "pbg"] = Field(
        "ntulm",
        description="trainer: ntulm (this package's; --nproc N shards the tables row-wise) or "
        "pbg (PyTorch-BigGraph 1.0, partitioned; --nproc N runs its distributed mode; needs "
        "pip install torchbiggraph 'setuptools<81')",
    )
    pbg_partitions: int = Field(
        0,
        ge=0,
        description="engine=pbg: partitions P of every node type (node i in partition i % P); "
        "0 = one per rank (1 for one process); at least the number of ranks",
    )
    pbg_workers: int = Field(
        0,
        ge=0,
        description="engine=pbg: HOGWILD worker processes per rank (0 = torch threads / ranks)",
    )
    pbg_machines: int = Field(
        1,
        ge=1,
        description="engine=pbg on several machines: ranks in all, one `ntulm train-kge` per "
        "machine with its pbg_rank, a shared --out (docs/scale.md); 1 = one machine (--nproc)",
    )
    pbg_rank: int = Field(0, ge=0, description="engine=pbg, several machines: this machine's rank")
    pbg_init_method: str | None = Field(
        None,
        description="engine=pbg, several machines: rendezvous URI of torch.distributed, "
        "tcp://HOST:PORT of rank 0 or file:///shared/path",
    )

    @model_validator(mode="after")
    def _check(self) -> KGEConfig:
        names = [r.name for r in self.relations]
        if len(names) != len(set(names)):
            raise ValueError(f"relations: duplicate names in {names}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):  # noqa: ANN001, ANN202 (pydantic's serializer protocol)
        data = handler(self)
        defaults = (("min_steps", 100), ("small_graph", "warn"), ("engine", "ntulm"))
        defaults += (("pbg_partitions", 0), ("pbg_workers", 0), ("pbg_machines", 1))
        defaults += (("pbg_rank", 0), ("pbg_init_method", None))
        for key, default in defaults:
            if data.get(key) == default:  # as before the fields existed: same fingerprints
                data.pop(key, None)
        return data

    def for_edges(self, n_train: int) -> tuple[KGEConfig, dict]:
        """This config for ``n_train`` training edges under the :attr:`small_graph` rule, and
        a record of it (steps, batch size used, what was done) for ``metrics.json``."""

        def steps(batch: int) -> int:
            return self.num_epochs * -(-n_train // batch) if n_train else 0

        rec = {"batch_size": self.batch_size, "optimizer_steps": steps(self.batch_size)}
        if not self.min_steps or rec["optimizer_steps"] >= self.min_steps or not n_train:
            return self, rec
        if self.small_graph == "scale":
            batch = max(self.num_batch_negs, n_train * self.num_epochs // self.min_steps, 1)
            log.warning(
                "kge: batch_size %d on %d training edges gives %d optimizer steps in all "
                "(< min_steps=%d): scaled to %d (%d steps)",
                self.batch_size, n_train, rec["optimizer_steps"], self.min_steps, batch,
                steps(batch),
            )  # fmt: skip
            rec = {
                "batch_size": batch,
                "optimizer_steps": steps(batch),
                "small_graph": f"batch scaled from {self.batch_size}",
            }
            return self.model_copy(update={"batch_size": batch}), rec
        suggest = max(1, n_train * self.num_epochs // self.min_steps)
        log.warning(
            "kge: batch_size %d on %d training edges gives only %d optimizer steps in all "
            "(< min_steps=%d); embeddings may be undertrained. Set batch_size<=%d, more "
            "num_epochs, or small_graph=scale",
            self.batch_size, n_train, rec["optimizer_steps"], self.min_steps, suggest,
        )  # fmt: skip
        rec["small_graph"] = f"warned: fewer than min_steps={self.min_steps} steps"
        return self, rec

    @property
    def effective_relation_lr(self) -> float:
        return self.relation_lr if self.relation_lr is not None else self.lr
