"""NTU embeddings: this trainer vs PyTorch-BigGraph on the same edges, config and evaluation.

    python benchmarks/bench_kge.py --graph /tmp/ira_graph [--max-edges N] [key=value ...]

Both train on the same held-out split of the graph (the same seeded split ``train-kge`` uses) with
the same dimension, lr, epochs, batch size and negatives; PBG uses the ``translation`` operator
(applied to the rhs, like ours) with the ``dot`` comparator, no global embedding and the
``logistic`` loss, i.e. f(u, r, v) = u·(v + r). PBG's output embeddings are scored with *our*
link-prediction code. Prints one JSON line and writes benchmarks/results/bench_kge.json.
Needs ``pip install torchbiggraph 'setuptools<81'``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ntulm.artifacts import write_json
from ntulm.kge.config import KGEConfig
from ntulm.kge.data import load_graph, loss_weights, split_edges
from ntulm.kge.evaluate import EdgeSet, link_prediction
from ntulm.kge.train import KGETrainer

RESULTS = Path(__file__).parent / "results" / "bench_kge.json"


def subset(edges: EdgeSet, weight: torch.Tensor, n: int, seed: int) -> tuple[EdgeSet, torch.Tensor]:
    if not n or n >= len(edges):
        return edges, weight
    idx = (
        torch.randperm(len(edges), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    )
    return EdgeSet(edges.lhs[idx], edges.rel[idx], edges.rhs[idx]), weight[idx]


def train_ntulm(cfg: KGEConfig, num_nodes: dict, relations: list, train: EdgeSet, w: torch.Tensor):
    trainer = KGETrainer(cfg, num_nodes, relations)
    for _ in range(cfg.num_epochs):
        trainer.train_epoch(train, loss_weights(w, cfg.weights))
    tables = {t: tab.weight for t, tab in trainer.tables.items()}
    return tables, trainer.rel.weight, trainer.state.seconds, trainer.dtype


def train_pbg(
    cfg: KGEConfig, num_nodes: dict, relations: list, train: EdgeSet, workdir: Path, workers: int
):
    warnings.filterwarnings("ignore", category=UserWarning)
    from torchbiggraph.checkpoint_manager import CheckpointManager
    from torchbiggraph.config import ConfigSchema
    from torchbiggraph.edgelist import EdgeList
    from torchbiggraph.entitylist import EntityList
    from torchbiggraph.graph_storages import FileEdgeStorage, FileEntityStorage
    from torchbiggraph.train import train as pbg_train
    from torchbiggraph.util import SubprocessInitializer, setup_logging

    # Import: PBG's own storage layer (what torchbiggraph.converters writes), one partition.
    entities, edges_dir, ckpt = workdir / "entities", workdir / "edges", workdir / "ckpt"
    ents = FileEntityStorage(str(entities))
    ents.prepare()
    for t, n in num_nodes.items():
        ents.save_count(t, 0, n)
    store = FileEdgeStorage(str(edges_dir))
    store.prepare()
    store.save_edges(
        0,
        0,
        EdgeList(EntityList.from_tensor(train.lhs), EntityList.from_tensor(train.rhs), train.rel),
    )
    config = ConfigSchema.from_dict(
        {
            "entities": {t: {"num_partitions": 1} for t in num_nodes},
            "relations": [
                {"name": r.name, "lhs": r.lhs, "rhs": r.rhs, "operator": r.operator}
                for r in relations
            ],
            "dimension": cfg.dimension,
            "comparator": "dot",
            "global_emb": False,
            "loss_fn": cfg.loss_fn,
            "lr": cfg.lr,
            "relation_lr": cfg.effective_relation_lr,
            "init_scale": cfg.init_scale,
            "num_epochs": cfg.num_epochs,
            "batch_size": cfg.batch_size,
            "num_batch_negs": cfg.num_batch_negs,
            "num_uniform_negs": cfg.num_uniform_negs,
            "eval_fraction": 0.0,
            "workers": workers,
            "entity_path": str(entities),
            "edge_paths": [str(edges_dir)],
            "checkpoint_path": str(ckpt),
        }
    )
    setup_logging()
    init = SubprocessInitializer()
    init.register(setup_logging)
    inner = _BucketTimes()
    logging.getLogger("torchbiggraph").addHandler(inner)
    t0 = time.perf_counter()
    pbg_train(config, subprocess_init=init)
    seconds = time.perf_counter() - t0
    logging.getLogger("torchbiggraph").removeHandler(inner)
    cm = CheckpointManager(str(ckpt))
    tables = {t: cm.read(t, 0)[0].float() for t in num_nodes}
    state, _ = cm.read_model()
    rvec = torch.zeros(len(relations), cfg.dimension)
    for key, val in (state or {}).items():
        m = re.search(r"rhs_operators\.(\d+)\.translation$", key)
        if m:
            rvec[int(m.group(1))] = val.float()
    return tables, rvec, seconds, inner.seconds


class _BucketTimes(logging.Handler):
    """Sums PBG's own "Processed N edges in T s" lines: its time inside the training loop."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        m = re.search(r"Processed \d+ edges in ([\d.]+) s", record.getMessage())
        if m:
            self.seconds += float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", default="/tmp/ira_graph")
    ap.add_argument(
        "--max-edges", type=int, default=0, help="seeded subset of the graph's edges (0 = all)"
    )
    ap.add_argument(
        "--workers", type=int, default=torch.get_num_threads(), help="PBG HOGWILD workers"
    )
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--skip-pbg", action="store_true")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="KGEConfig overrides")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = KGEConfig.from_sources(None, args.overrides)
    graph = load_graph(args.graph, cfg)
    edges, weight = subset(graph.edges, graph.weight, args.max_edges, cfg.seed)
    train, w, test = split_edges(edges, weight, cfg.eval_fraction, cfg.seed)
    num_nodes = {t: len(k) for t, k in graph.keys.items()}
    rels = [(r.name, r.lhs, r.rhs) for r in graph.relations]
    ev = dict(num_candidates=cfg.eval_num_candidates, max_edges=cfg.eval_max_edges, seed=cfg.seed)
    n_seen = len(train) * cfg.num_epochs

    tables, rvec, secs, dtype = train_ntulm(cfg, num_nodes, graph.relations, train, w)
    ours = link_prediction(tables, rvec, rels, test, edges, **ev)
    result = {
        "graph": args.graph,
        "edges_total": len(edges),
        "edges_train": len(train),
        "edges_held_out": len(test),
        "nodes": num_nodes,
        "config": cfg.model_dump(mode="json"),
        "ntulm_compute_dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "ntulm_seconds": secs,
        "ntulm_edges_per_s": n_seen / secs,
        "ntulm_mrr": ours["overall"]["mrr"],
        "ntulm_link_prediction": ours,
        "protocol": ours["protocol"],
    }
    if not args.skip_pbg:
        with tempfile.TemporaryDirectory(prefix="pbg_") as tmp:
            p_tables, p_rvec, p_secs, p_inner = train_pbg(
                cfg, num_nodes, graph.relations, train, Path(tmp), args.workers
            )
        pbg = link_prediction(p_tables, p_rvec, rels, test, edges, **ev)
        result.update(
            {
                "pbg_workers": args.workers,
                "pbg_seconds": p_secs,
                "pbg_edges_per_s": n_seen / p_secs,
                "pbg_loop_seconds": p_inner,
                "pbg_loop_edges_per_s": n_seen / p_inner if p_inner else None,
                "pbg_mrr": pbg["overall"]["mrr"],
                "pbg_link_prediction": pbg,
                "ratio": p_secs / secs,
                "ratio_vs_pbg_loop": p_inner / secs if p_inner else None,
            }
        )
    write_json(args.out, result)
    keys = ("ntulm_edges_per_s", "pbg_edges_per_s", "pbg_loop_edges_per_s", "ratio")
    keys += ("ratio_vs_pbg_loop", "ntulm_mrr", "pbg_mrr", "edges_train")
    print(json.dumps({k: result.get(k) for k in keys}))


if __name__ == "__main__":
    main()
