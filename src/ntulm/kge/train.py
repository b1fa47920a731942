"""Training loop of the NTU embeddings: epochs, batches, checkpoints, resume, the artifact.

One epoch: the training edges are shuffled (seeded per epoch, so a resumed run draws exactly
what an uninterrupted one would), cut into batches of ``batch_size`` edges (edges whose relations
share node types only), each batch into chunks of ``num_batch_negs`` edges. A batch is one
optimizer step: row-wise Adagrad on the rows it touched, dense Adagrad on the relation vectors.
A checkpoint is written atomically after every ``checkpoint_every`` epochs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ntulm import distributed
from ntulm.artifacts import atomic_path, fingerprint, mark_done, output_lock, unmark, write_json
from ntulm.errors import ArtifactError
from ntulm.kge.config import KGEConfig
from ntulm.kge.data import GraphData, load_graph, training_split
from ntulm.kge.embeddings import NTUEmbeddings
from ntulm.kge.evaluate import EdgeSet, link_prediction
from ntulm.kge.model import (
    EmbeddingTable,
    RelationVectors,
    Workspace,
    chunk_grads,
    positive_equal,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
# Edges scored per matmul group. Small groups keep the (C, B, B + U) score buffers in cache
# for the element-wise passes between the matmuls (measured: 4 chunks of 500 beat 32).
GROUP_EDGES = 2_000


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        name = "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
    return torch.bfloat16 if name == "bfloat16" else torch.float32


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    loss_per_epoch: list[float] = field(default_factory=list)  # mean loss per edge
    seconds: float = 0.0  # training time (excluding evaluation and checkpoints)
    edges_seen: int = 0


class KGETrainer:
    """Owns the tables, relation vectors and the per-epoch loop over one edge set."""

    def __init__(self, config: KGEConfig, num_nodes: dict[str, int], relations: list) -> None:
        self.config = config
        self.relations = relations
        gen = torch.Generator().manual_seed(config.seed)
        self.tables = {t: self._make_table(n, gen) for t, n in sorted(num_nodes.items())}
        translating = torch.tensor([r.operator == "translation" for r in relations])
        self.rel = RelationVectors(len(relations), config.dimension, translating)
        self.dtype = resolve_dtype(config.compute_dtype)
        self.state = TrainState()
        self._dense_bufs: dict[int, torch.Tensor] = {}  # id(table) -> reused gradient buffer
        self._workspace = Workspace()  # score / gradient buffers reused across chunk groups

    def _make_table(self, num_rows: int, gen: torch.Generator) -> EmbeddingTable:
        return EmbeddingTable(num_rows, self.config.dimension, self.config.init_scale, gen)

    @property
    def checkpoint_suffix(self) -> str:
        """Tells checkpoint files of one process apart from those of a sharded run's ranks."""
        return ""

    # ------------------------------------------------------------------ one epoch
    def _batches(self, edges: EdgeSet, gen: torch.Generator) -> list[torch.Tensor]:
        """Shuffled edge indices cut into batches, each within one (lhs type, rhs type) bucket."""
        pair_of_rel = [(r.lhs, r.rhs) for r in self.relations]
        buckets: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(pair_of_rel):
            buckets.setdefault(p, []).append(i)
        batches = []
        for rels in buckets.values():
            idx = torch.isin(edges.rel, torch.tensor(rels)).nonzero().squeeze(1)
            idx = idx[torch.randperm(len(idx), generator=gen)]
            batches.extend(idx.split(self.config.batch_size))
        if len(buckets) > 1:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen)]
        return batches

    def train_epoch(self, edges: EdgeSet, weight: torch.Tensor, bar: tqdm | None = None) -> float:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.state.epoch + 1)
        total_loss, t0 = 0.0, time.perf_counter()
        for batch in self._batches(edges, gen):
            loss = self.train_batch(edges, weight, batch, gen)
            total_loss += loss
            if bar is not None:
                bar.update(len(batch))
                bar.set_postfix(loss=f"{loss / len(batch):.4f}", refresh=False)
        self.state.seconds += time.perf_counter() - t0
        self.state.edges_seen += len(edges)
        self.state.epoch += 1
        mean = total_loss / max(len(edges), 1)
        self.state.loss_per_epoch.append(mean)
        return mean

    def train_batch(
        self, edges: EdgeSet, weight: torch.Tensor, batch: torch.Tensor, gen: torch.Generator
    ) -> float:
        """Loss of one batch and one optimizer step on the rows it touched."""
        cfg = self.config
        B, U = cfg.num_batch_negs, cfg.num_uniform_negs
        rel0 = self.relations[int(edges.rel[batch[0]])]
        lt, rt = self.tables[rel0.lhs], self.tables[rel0.rhs]
        # Chunks: full chunks of B edges, then one shorter chunk; U uniform negatives per chunk.
        n_chunks = -(-len(batch) // B)
        uni_l = torch.randint(lt.num_rows, (n_chunks, U), generator=gen)
        uni_r = torch.randint(rt.num_rows, (n_chunks, U), generator=gen)
        lhs, rhs, rel = edges.lhs[batch], edges.rhs[batch], edges.rel[batch]
        # Gradient buffers: full-table ones when the step covers the table (no unique / position
        # lookups, one dense Adagrad pass), else buffers for the touched rows only (sparse).
        same = lt is rt
        n_l = len(batch) + uni_l.numel() + (len(batch) + uni_r.numel() if same else 0)
        n_r = len(batch) + uni_r.numel()
        grad_l, pos_l, uniq_l = self._grad_buffer(
            lt, n_l, [lhs, uni_l] + ([rhs, uni_r] if same else [])
        )
        if same:
            grad_r, pos_r, uniq_r = grad_l, pos_l, uniq_l
        else:
            grad_r, pos_r, uniq_r = self._grad_buffer(rt, n_r, [rhs, uni_r])
        d_rel = torch.zeros_like(self.rel.weight)
        loss = self.score_chunks(
            (lhs, rhs, rel, uni_l, uni_r, weight[batch]),
            (lambda flat: lt.weight.index_select(0, flat), pos_l, grad_l),
            (lambda flat: rt.weight.index_select(0, flat), pos_r, grad_r),
            d_rel,
        )
        for tab, grad, uniq in ((lt, grad_l, uniq_l), (rt, grad_r, uniq_r)):
            if uniq is None:
                tab.dense_step(grad, cfg.lr)
            else:
                tab.step(uniq, grad, cfg.lr)
            if same:
                break
        self.rel.update(d_rel, cfg.effective_relation_lr)
        return loss

    def score_chunks(
        self,
        part: tuple[torch.Tensor, ...],
        left: tuple[Callable, Callable, torch.Tensor],
        right: tuple[Callable, Callable, torch.Tensor],
        d_rel: torch.Tensor,
    ) -> float:
        """Loss of consecutive chunks; gradients added into the side buffers and ``d_rel``.

        ``part``: (lhs, rhs, rel, w) of the edges (full chunks of B edges, then at most one
        shorter chunk) and the uniform negatives (C, U) per side, as (lhs, rhs, rel, uni_l, uni_r,
        w). ``left`` / ``right``: (global ids -> rows, global ids -> buffer row, buffer)."""
        cfg = self.config
        d, B = cfg.dimension, cfg.num_batch_negs
        lhs, rhs, rel, uni_l, uni_r, w = part
        (rows_l, pos_l, grad_l), (rows_r, pos_r, grad_r) = left, right
        n_chunks = uni_l.shape[0]
        n_full = n_chunks if len(lhs) == n_chunks * B else n_chunks - 1
        per_group = max(1, GROUP_EDGES // B)
        # Once per call, not per group: the candidate ids of every chunk (C, K), the masks of
        # positive-equal candidates, and whether the loss weights are all 1 (then the weight
        # pass over the score gradients is skipped).
        runs = [(0, n_full, B)] + (
            [(n_full, n_chunks, len(lhs) - n_full * B)] * (n_full < n_chunks)
        )
        weight = None if bool((w == 1).all()) else w
        ws = self._workspace
        loss = 0.0
        for r0, r1, bb in runs:
            if r1 == r0:
                continue
            e0, e1 = r0 * B, r0 * B + (r1 - r0) * bb
            ids_l = torch.cat([lhs[e0:e1].view(-1, bb), uni_l[r0:r1]], dim=1)  # (c, K)
            ids_r = torch.cat([rhs[e0:e1].view(-1, bb), uni_r[r0:r1]], dim=1)  # (c, K)
            masks = [positive_equal(ids, bb) for ids in (ids_l, ids_r)]
            starts = list(range(0, r1 - r0, per_group)) + [r1 - r0]
            cuts = [torch.searchsorted(m[0], torch.tensor(starts)).tolist() for m in masks]
            for k in range(len(starts) - 1):
                c0, c1 = starts[k], starts[k + 1]
                g_masks = tuple(
                    (
                        m[0][cut[k] : cut[k + 1]] - c0,
                        m[1][cut[k] : cut[k + 1]],
                        m[2][cut[k] : cut[k + 1]],
                    )
                    for m, cut in zip(masks, cuts, strict=True)
                )
                flat_l, flat_r = ids_l[c0:c1].reshape(-1), ids_r[c0:c1].reshape(-1)
                g0, g1 = e0 + c0 * bb, e0 + c1 * bb
                g = chunk_grads(
                    rows_l(flat_l).view(c1 - c0, -1, d),
                    rows_r(flat_r).view(c1 - c0, -1, d),
                    rel[g0:g1].view(-1, bb),
                    self.rel.weight,
                    ids_l[c0:c1],
                    ids_r[c0:c1],
                    None if weight is None else weight[g0:g1].view(-1, bb),
                    cfg.loss_fn,
                    cfg.neg_reduction,
                    self.dtype,
                    masks=g_masks,
                    workspace=ws,
                )
                loss += g.loss
                grad_l.index_add_(0, pos_l(flat_l), g.d_lhs.reshape(-1, d))
                grad_r.index_add_(0, pos_r(flat_r), g.d_rhs.reshape(-1, d))
                d_rel += g.d_rel
        return loss

    def _grad_buffer(
        self, table: EmbeddingTable, num_ids: int, ids: list[torch.Tensor]
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], torch.Tensor | None]:
        """(zeroed gradient buffer, id -> buffer row, touched rows or None for a dense buffer).

        The dense buffer is kept between steps: a fresh (n, d) allocation per step would pay
        its page faults every time."""
        d = self.config.dimension
        if table.dense_grads(num_ids):
            buf = self._dense_bufs.get(id(table))
            if buf is None:
                buf = self._dense_bufs[id(table)] = torch.empty(table.num_rows, d)
            return buf.zero_(), lambda x: x, None
        uniq = table.unique(torch.cat([i.reshape(-1) for i in ids]))
        return torch.zeros(len(uniq), d), table.positions(uniq), uniq

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "tables": {t: tab.state_dict() for t, tab in self.tables.items()},
            "relations": self.rel.state_dict(),
            "state": vars(self.state),
            "config_fingerprint": fingerprint(self.config.model_dump(mode="json")),
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd["config_fingerprint"] != fingerprint(self.config.model_dump(mode="json")):
            raise ArtifactError("checkpoint was written with a different config; cannot resume")
        for t, tab in self.tables.items():
            tab.load_state_dict(sd["tables"][t])
        self.rel.load_state_dict(sd["relations"])
        self.state = TrainState(**sd["state"])

    def save_checkpoint(self, out_dir: Path) -> Path:
        """Tensors in safetensors, the counters and config fingerprint as JSON in its metadata:
        nothing in a checkpoint is executable (no pickle)."""
        ckdir = out_dir / CHECKPOINTS
        ckdir.mkdir(parents=True, exist_ok=True)
        path = ckdir / f"epoch_{self.state.epoch:04d}{self.checkpoint_suffix}.safetensors"
        sd = self.state_dict()
        tensors = {f"relations.{k}": v for k, v in sd["relations"].items()}
        for t, tab in sd["tables"].items():
            tensors.update({f"table.{t}.{k}": v for k, v in tab.items()})
        meta = {"state": json.dumps(sd["state"]), "config_fingerprint": sd["config_fingerprint"]}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        for old in ckdir.glob(f"epoch_????{self.checkpoint_suffix}.safetensors"):  # latest only
            if old != path:
                old.unlink()
        return path

    def resume(self, out_dir: Path) -> bool:
        ckdir = out_dir / CHECKPOINTS
        # Left by a run killed while writing (tmp names: atomic_path's ".<name>.<random>.tmp").
        for orphan in ckdir.glob(f".epoch_????{self.checkpoint_suffix}.safetensors.*.tmp"):
            log.info("removing unfinished checkpoint %s", orphan)
            orphan.unlink(missing_ok=True)
        if sorted(ckdir.glob("epoch_*.pt")):
            raise ArtifactError(
                f"{ckdir}: holds a checkpoint of an older ntulm (epoch_*.pt, pickle); "
                "it is not loaded: delete it to start over"
            )
        found = sorted(ckdir.glob(f"epoch_????{self.checkpoint_suffix}.safetensors"))
        if not found:
            return False
        path = found[-1]
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            sd = {
                "tables": {
                    t: {k: tensors[f"table.{t}.{k}"] for k in ("weight", "state")}
                    for t in self.tables
                },
                "relations": {k: tensors[f"relations.{k}"] for k in ("weight", "state")},
                "state": json.loads(meta["state"]),
                "config_fingerprint": meta["config_fingerprint"],
            }
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ArtifactError(
                f"{path}: corrupt checkpoint ({type(exc).__name__}: {exc}); delete it to start over"
            ) from None
        self.load_state_dict(sd)
        log.info("resumed from %s (epoch %d done)", path, self.state.epoch)
        return True

    def embeddings(self, graph: GraphData) -> NTUEmbeddings:
        return NTUEmbeddings(
            tables={t: tab.weight.numpy().copy() for t, tab in self.tables.items()},
            keys=graph.keys,
            relations={
                r.name: self.rel.weight[i].numpy().copy() for i, r in enumerate(self.relations)
            },
            user_handles=graph.user_handles,
            config=self.config.model_dump(mode="json"),
        )


def train_kge(
    graph_dir: str | Path,
    out_dir: str | Path,
    config: KGEConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    nproc: int = 1,
) -> tuple[NTUEmbeddings | None, dict]:
    """Train on a graph artifact and write the KGE artifact; returns (embeddings, metrics).

    ``config.engine == "pbg"``: PyTorch-BigGraph trains instead (``kge/pbg_run.py``), with
    ``nproc`` ranks on this machine (its distributed mode for ``nproc > 1``); same split, same
    artifact, same evaluation.

    Started by ``torchrun`` with several processes (``ntulm train-kge --nproc N``), the tables
    are sharded row-wise over the ranks (``kge/sharded.py``); rank 0 writes the artifact and
    gets the embeddings, the other ranks get None. The run owns ``out_dir``
    (:func:`~ntulm.artifacts.output_lock`, held by rank 0)."""
    if config is not None and config.engine == "pbg":
        from ntulm.kge.pbg_run import train_pbg

        with output_lock(out_dir) if config.pbg_rank == 0 else contextlib.nullcontext():
            return train_pbg(
                graph_dir, out_dir, config, nproc=nproc, resume=resume, evaluate=evaluate
            )
    if nproc != 1:
        raise ValueError("train_kge: nproc is for engine=pbg; the ntulm engine runs under torchrun")
    with output_lock(out_dir) if distributed.writer() else contextlib.nullcontext():
        return _train_kge(graph_dir, out_dir, config, resume, progress, evaluate, on_epoch_end)


def _train_kge(
    graph_dir: str | Path,
    out_dir: str | Path,
    config: KGEConfig | None,
    resume: bool,
    progress: bool,
    evaluate: bool,
    on_epoch_end: Callable[[int], None] | None,
) -> tuple[NTUEmbeddings | None, dict]:
    config = config or KGEConfig()
    out = Path(out_dir)
    sharded = distributed.launched()  # started by torchrun: tables sharded over the ranks
    # the KGE tables, scores and collectives live on the CPU (no CUDA path yet): gloo
    rank = distributed.init(distributed.backend_for("cpu"))[0] if sharded else 0
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        unmark(out)  # incomplete until this run finishes
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    graph = load_graph(graph_dir, config)
    train, weight, test = training_split(graph, config)
    config, schedule = config.for_edges(len(train))  # small graphs: kge/config.py's rule
    num_nodes = {t: len(k) for t, k in graph.keys.items()}
    if sharded:
        from ntulm.kge.sharded import ShardedKGETrainer

        torch.distributed.barrier()  # rank 0 has made the output directory
        trainer: KGETrainer = ShardedKGETrainer(config, num_nodes, graph.relations)
    else:
        trainer = KGETrainer(config, num_nodes, graph.relations)
    if resume:
        found = trainer.resume(out)
        if sharded:
            epochs = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(epochs, trainer.state.epoch if found else -1)
            if len(set(epochs)) > 1:
                raise ArtifactError(
                    f"{out / CHECKPOINTS}: the ranks' checkpoints are of different epochs "
                    f"{epochs} (or missing); delete them to start over"
                )
    if rank == 0:
        write_json(out / "config.json", config.model_dump(mode="json"))
    log.info("training on %d edges, %d held out, dtype %s", len(train), len(test), trainer.dtype)
    bar = tqdm(
        total=len(train) * config.num_epochs,
        initial=len(train) * trainer.state.epoch,
        unit="edge",
        unit_scale=True,
        disable=not progress or rank != 0,
        desc="train-kge",
    )
    with bar:
        while trainer.state.epoch < config.num_epochs:
            mean = trainer.train_epoch(train, weight, bar)
            log.info("epoch %d: loss/edge %.4f", trainer.state.epoch, mean)
            if (
                trainer.state.epoch % config.checkpoint_every == 0
                or trainer.state.epoch == config.num_epochs
            ):
                trainer.save_checkpoint(out)
            if on_epoch_end is not None:
                on_epoch_end(trainer.state.epoch)
    emb = trainer.embeddings(graph)  # sharded: assembled on rank 0, None elsewhere
    st = trainer.state
    metrics: dict = {
        "train": {
            "edges": len(train),
            "held_out_edges": len(test),
            "epochs": st.epoch,
            "loss_per_epoch": st.loss_per_epoch,
            "seconds": st.seconds,
            "edges_per_s": st.edges_seen / st.seconds if st.seconds else None,
            "compute_dtype": str(trainer.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            **schedule,
            "peak_rss_mb": distributed.peak_rss_mb(),  # this process (rank 0 when sharded)
        }
    }
    if sharded:
        metrics["distributed"] = trainer.shard_report()  # type: ignore[attr-defined]
    if emb is not None:
        if evaluate and len(test):
            metrics.update(evaluate_embeddings(emb, graph, test, config))
        emb.save(out, done=False)
        write_json(out / "metrics.json", metrics)
        mark_done(out, "kge", config.model_dump(mode="json"), graph=str(graph_dir))
    if sharded:
        torch.distributed.barrier()  # no rank returns before the artifact is finished
    return emb, metrics


def evaluate_embeddings(
    emb: NTUEmbeddings, graph: GraphData, test: EdgeSet, config: KGEConfig
) -> dict:
    """Link prediction of ``emb`` and of a random-embedding baseline, same protocol."""
    rels = [(r.name, r.lhs, r.rhs) for r in graph.relations]
    tables = {t: torch.from_numpy(a) for t, a in emb.tables.items()}
    rvec = torch.stack([torch.from_numpy(emb.relations[r.name]) for r in graph.relations])
    kw = dict(
        num_candidates=config.eval_num_candidates, max_edges=config.eval_max_edges, seed=config.seed
    )
    t0 = time.perf_counter()
    model = link_prediction(tables, rvec, rels, test, graph.edges, **kw)
    gen = torch.Generator().manual_seed(config.seed + 31337)
    rand_tables = {t: torch.randn(a.shape, generator=gen) for t, a in tables.items()}
    baseline = link_prediction(
        rand_tables, torch.randn(rvec.shape, generator=gen), rels, test, graph.edges, **kw
    )
    log.info(
        "link prediction (%.1fs): MRR %.4f over %d held-out edges (random baseline %.4f)",
        time.perf_counter() - t0,
        model["overall"]["mrr"],
        model["overall"]["edges"],
        baseline["overall"]["mrr"],
    )
    for warning in model["warnings"]:
        log.warning("link prediction: %s", warning)
    return {"link_prediction": model, "random_baseline": baseline}
