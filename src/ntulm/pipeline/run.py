"""``ntulm run``: graph -> NTU embeddings -> fine-tuning -> post embeddings -> evaluation -> report.

Layout of the output directory::

    config.json                resolved PipelineConfig
    graph/ kge/                stage artifacts
    lm/<variant>[-s<seed>]/    fine-tuned models (no model for BERT-post-concat)
    embeddings/<variant>/<task>.npz   cached post embeddings (train/val/test, their post ids)
    results.json report.md *.png      results and the report (``report.py``)

The run owns the directory (``ntulm.artifacts.output_lock``: a second run into it fails at once).
Every stage directory's ``DONE.json`` (the one completion marker, ``ntulm.artifacts``) carries
``run_fingerprint``, the fingerprint of everything that made it (its config, its inputs, the
fingerprints upstream). A second run with the same config reuses each finished stage; a change
re-runs that stage and everything after it; a stage interrupted mid-way has no marker and is
re-run. Each embedding file is written atomically with its fingerprint inside, which is its own
proof of completeness. (Directories of older versions, marked by ``PIPELINE.json``, are reused.)

Choices (documented in the report):
- task splits use ``eval.seed`` once; ``seeds`` vary the downstream MLP (and, with
  ``finetune_per_seed``, the fine-tuning);
- the test posts of corpus tasks and their validation posts are kept out of the fine-tuning
  sample, in a design run (``eval.design``) too, where the tasks score on validation halves: its
  fine-tunes are the very models the test run of the same config uses (and reuses); the hashtag
  task's validation and test posts also give no graph edges (and with ``exclusion: strict`` no
  test author keeps an edge to its removed hashtag);
- ``protocol: temporal`` (``evaluate/temporal.py``): the cutoff is resolved once from the posts
  table; the graph (so the NTU embeddings) is built from the posts strictly before it, the
  fine-tuning sample is drawn from them, and every corpus task validates and tests on posts at or
  after it; posts without a time are in none of these (counted);
- the overlap flag of a test post (Table 4) is the same for every model: at least one of its NTUs
  of the types any variant uses is in the NTU embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import zlib
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ntulm.artifacts import (
    atomic_path,
    fingerprint,
    is_fresh,
    mark_run,
    output_lock,
    read_json,
    write_text,
)
from ntulm.errors import ArtifactError, ConfigError
from ntulm.evaluate.config import TaskSpec
from ntulm.evaluate.controls import control_ntus
from ntulm.evaluate.protocol import validation_task
from ntulm.evaluate.runner import evaluate_task
from ntulm.evaluate.tasks import Task, build_tasks
from ntulm.evaluate.temporal import BEFORE, Temporal, before_sql, temporal
from ntulm.graph.build import build_graph_from_table, edge_exclusion_lines, read_posts_table
from ntulm.kge import NTUEmbeddings, train_kge
from ntulm.lm.config import CHECKPOINT, STAGE, LMConfig, resolve_device, resolve_dtype
from ntulm.lm.data import appended_vectors, concat_groups, ntu_inputs, ntu_vectors
from ntulm.memory import trim, tune_allocator
from ntulm.pipeline.config import PipelineConfig, VariantSpec
from ntulm.pipeline.progress import StageLog
from ntulm.posts import Post
from ntulm.posts.rows import PostsTable
from ntulm.workers import run_isolated

if TYPE_CHECKING:  # the model code (transformers: ~110 MB resident) is imported where it runs:
    # with isolate_stages, only in the workers, never in the run's own process
    from ntulm.lm.model import NTULM

log = logging.getLogger(__name__)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


class Pipeline:
    def __init__(self, config: PipelineConfig, out_dir: str | Path, *, progress: bool = True):
        self.cfg = config
        self.out = Path(out_dir)
        self.progress = progress
        self.reused: list[str] = []
        self.ran: list[str] = []
        self.timings: dict[str, float] = {}
        self.used_embeddings: set[Path] = set()  # the cache files this run read or wrote
        self._memo: dict[str, dict[tuple, np.ndarray]] = {}
        self.stage = StageLog()  # log lines, shown or not by the log level (not bars)
        self.temporal: Temporal | None = None
        # post ids the fine-tuning sample leaves out: every task's validation and test posts as
        # the tasks are built, before a design run (eval.design) replaces their splits
        self.lm_held: set[str] = set()
        # "auto" resolved once, on this machine: it keys the embedding cache and results.json
        self.embed_device = resolve_device(config.eval.embed_device, "eval.embed_device")
        self.embed_dtype = resolve_dtype(config.eval.embed_dtype, self.embed_device)

    # -- data and tasks --------------------------------------------------------------------
    def read_corpus(self) -> PostsTable:
        """The corpus as a Parquet posts table under ``posts/``, read once and reused: the graph,
        the tasks and the fine-tuning sample are all built from it."""
        g = self.cfg.graph  # (its read section is cfg.read)
        d = self.out / "posts"
        fp = fingerprint([self.cfg.posts, self.cfg.read.table_key()])
        done = is_fresh(d, "posts", fp)
        if done is not None and "report" in done:
            self.reused.append("posts")
            self.read_report = done["report"]
        else:
            t = time.perf_counter()
            if d.exists():
                shutil.rmtree(d)
            report = read_posts_table(self.cfg.posts, g, d, d / "rejected.jsonl", self.progress)
            self.read_report = report.to_json()
            self.timings["posts"] = time.perf_counter() - t
            mark_run(d, "posts", fp, report=self.read_report)
            self.ran.append("posts")
        self.posts_fp = fp
        log.info(
            "corpus: %d posts (%d rejected)",
            self.read_report["accepted"],
            self.read_report["rejected"],
        )
        return PostsTable(d, memory_limit=g.memory_limit, threads=g.threads)

    def resolve_protocol(self, posts: PostsTable | list[Post]) -> dict[str, Any]:
        """The protocol record of ``results.json``; under ``temporal`` also resolve the cutoff
        once over the corpus (:attr:`temporal`)."""
        c = self.cfg
        if c.protocol != "temporal":
            return {"protocol": c.protocol}
        try:
            self.temporal = temporal(posts, c.cutoff, c.cutoff_quantile, c.train_from)
        except ValueError as exc:
            raise ConfigError(f"protocol temporal: {exc}") from None
        rec = self.temporal.to_json()
        for side, words in (("before", "before"), ("after", "at or after")):
            if not rec[f"posts_{side}"]:
                raise ConfigError(
                    f"protocol temporal: no post {words} the cutoff {rec['cutoff']} "
                    f"({rec['posts_before']} before, {rec['posts_after']} at or after)"
                )
        if rec["posts_without_time"]:
            log.warning(
                "temporal protocol: %d posts without a readable created_at are left out of the "
                "graph, the fine-tuning sample and every task",
                rec["posts_without_time"],
            )
        log.info(
            "temporal protocol: cutoff %s (%s); %d posts before, %d at or after, %d without time "
            "(left out)",
            rec["cutoff"],
            rec["cutoff_given"],
            rec["posts_before"],
            rec["posts_after"],
            rec["posts_without_time"],
        )
        return rec

    def build_tasks(self, posts: PostsTable | list[Post] | None) -> list[tuple[TaskSpec, Task]]:
        tasks = []
        for spec in self.cfg.eval.tasks:
            corpus = spec.type != "tweeteval"
            try:
                built = build_tasks(
                    spec,
                    posts if corpus else None,
                    self.cfg.eval.seed,
                    temporal=self.temporal if corpus else None,
                )
            except ValueError as exc:  # the data cannot make this task: a config problem
                raise ConfigError(f"eval.tasks ({spec.name or spec.type}): {exc}") from None
            for task in built:
                self.lm_held.update(q.id for q in (*task.val, *task.test))
                if self.cfg.eval.design:  # the test posts are never read
                    task = validation_task(task, self.cfg.eval.seed)
                tasks.append((spec, task))
                log.info(
                    "task %s: %d train, %d val, %d test",
                    task.name,
                    len(task.train),
                    len(task.val),
                    len(task.test),
                )
        return tasks

    # -- stages ------------------------------------------------------------------------------
    def graph(self, exclude: list[str], edges: list[tuple] | None = None) -> str:
        """The graph, from the posts table :meth:`read_corpus` wrote (not from the files again)."""
        d = self.out / "graph"
        exclude_file = self.out / "exclude_posts.txt"
        write_text(exclude_file, "".join(f"{i}\n" for i in exclude))
        edges_file = self.out / "exclude_edges.jsonl"  # the strict hashtag task's pairs
        write_text(edges_file, edge_exclusion_lines(edges or []))
        cfg = self.cfg.graph.model_copy(
            update={
                "exclude_posts": str(exclude_file) if exclude else None,
                "exclude_edges": str(edges_file) if edges else None,
            }
        )
        # the exclusion enters by content, not by its file's path: a copied graph/ stays valid
        excluded = fingerprint(exclude) if not edges else fingerprint([exclude, edges])
        # The graph's content: the posts table (its fingerprint covers the files and how they
        # were read), the graph's content fields (not engines, workers or memory) and the
        # exclusions. `legacy`: how versions before the read section fingerprinted the same graph.
        parts = [self.cfg.graph.content_key(), self.posts_fp, excluded]
        legacy = [self.cfg.graph.legacy_key(), self.cfg.posts, excluded]
        where = None
        if self.temporal is not None:  # only pre-cutoff posts (the paper's fingerprint unchanged)
            where = before_sql(self.temporal.at)
            parts.append(["temporal cutoff", self.temporal.at])
            legacy.append(["temporal cutoff", self.temporal.at])
        fp = fingerprint(parts)
        if is_fresh(d, "graph", fp):
            self.reused.append("graph")
        elif is_fresh(d, "graph", fingerprint(legacy)):
            # made by an earlier version from the same inputs: reused, and its fingerprint goes on
            # downstream, so that the NTU embeddings and models made from it are reused too
            fp = fingerprint(legacy)
            self.reused.append("graph")
        else:
            t = time.perf_counter()
            build_graph_from_table(
                self.out / "posts", d, cfg, posts_report=self.read_report, posts_filter=where
            )
            self.timings["graph"] = time.perf_counter() - t
            mark_run(d, "graph", fp)
            self.ran.append("graph")
        self.graph_stats = read_json(d / "stats.json")
        return fp

    def kge(self, graph_fp: str) -> tuple[NTUEmbeddings, str]:
        d = self.out / "kge"
        fp = fingerprint([self.cfg.kge.model_dump(mode="json"), graph_fp])
        if is_fresh(d, "kge", fp):
            self.reused.append("kge")
            emb = NTUEmbeddings.load(d)
        else:
            t = time.perf_counter()
            if self.cfg.isolate_stages:  # in a worker, as the fine-tunes (memory back to the OS)
                args = (str(self.out / "graph"), str(d), self.cfg.kge, self.progress)
                run_isolated(_kge_job, *args)
                emb = NTUEmbeddings.load(d)
            else:
                emb, _ = train_kge(self.out / "graph", d, self.cfg.kge, progress=self.progress)
            self.timings["kge"] = time.perf_counter() - t
            mark_run(d, "kge", fp)
            self.ran.append("kge")
        self.kge_metrics = read_json(d / "metrics.json") if (d / "metrics.json").exists() else {}
        return emb, fp

    def finetune(
        self, v: VariantSpec, seed: int, sample: list[Post], emb: NTUEmbeddings, kge_fp: str
    ) -> tuple[Path, str, dict]:
        lcfg = self.cfg.lm_config(v, seed)
        # the social objective mines its post pairs from the NTU embeddings, even for a model
        # that does not inject NTUs
        needs_ntu = v.use_ntu or lcfg.social_weight > 0
        suffix = f"-s{seed}" if self.cfg.finetune_per_seed else ""
        d = self.out / "lm" / f"{_slug(v.name)}{suffix}"
        fp = fingerprint(
            [
                lcfg.model_dump(mode="json"),
                kge_fp if needs_ntu else None,
                fingerprint([p.id for p in sample]),
            ]
        )
        done = is_fresh(d, STAGE, fp)
        if done is not None and "result" in done:
            self.reused.append(f"finetune {v.name}{suffix}")
        else:
            t = time.perf_counter()
            # resume a crashed fine-tune from its checkpoint; a fresh one starts quietly
            resume = (d / CHECKPOINT).exists()
            quiet = lcfg.model_copy(update={"progress": lcfg.progress and self.progress})
            if self.cfg.isolate_stages:  # in a worker: its memory goes back to the OS with it
                kge_dir = str(self.out / "kge") if needs_ntu else None
                lean = self.cfg.lean_finetune
                args = (sample, quiet.model_dump(mode="json"), str(d), kge_dir, resume, lean)
                result = run_isolated(_finetune_job, *args)
            else:
                ntu = emb if needs_ntu else None
                from ntulm.lm.train import finetune

                result = finetune(sample, quiet, d, ntu=ntu, resume=resume).to_json()
            self.timings[f"finetune {v.name}{suffix}"] = time.perf_counter() - t
            trim()
            done = {"result": result}
            mark_run(d, STAGE, fp, **done)
            self.ran.append(f"finetune {v.name}{suffix}")
        return d, fp, done["result"]

    # -- embeddings ------------------------------------------------------------------------
    def _embedding_file(self, v: VariantSpec, model_fp: str, task: Task) -> tuple[Path, str]:
        """Where the embeddings of ``task`` under ``v`` are cached, and their fingerprint. The
        file name carries the fingerprint (16 hex digits), so the embeddings of each
        fine-tuning seed's model (and of each embedding setting) are kept side by side: a
        3-seed evaluation run again encodes nothing. A file of the earlier layout
        (``<task>.npz``, one model at a time) is still used where it holds this fingerprint."""
        d = self.out / "embeddings" / _slug(v.name)
        fp = fingerprint(
            [
                model_fp,
                v.model_dump(mode="json"),
                self.embed_dtype,
                task.name,
                task_content_key(task),
                # on the CPU the key is what it was before embed_device existed: caches stay
                *([self.embed_device] if self.embed_device != "cpu" else []),
            ]
        )
        path = d / f"{_slug(task.name)}.{fp}.npz"
        legacy = d / f"{_slug(task.name)}.npz"
        if not path.exists() and self._is_cached(legacy, fp):
            return legacy, fp
        return path, fp

    @staticmethod
    def _is_cached(path: Path, fp: str) -> bool:
        if not path.exists():  # written atomically: a file that exists is whole
            return False
        with np.load(path) as z:  # (members are read on access: this reads the fingerprint)
            return "test_ids" in z.files and str(z["fingerprint"]) == fp

    def embeddings(
        self,
        v: VariantSpec,
        model: NTULM | Path,
        model_fp: str,
        task: Task,
        emb: NTUEmbeddings | None,
    ) -> dict[str, np.ndarray]:
        """Cached train/val/test embeddings of one task under one variant. ``model`` is a loaded
        model, or its directory when :meth:`embed_in_workers` has already written the file."""
        path, fp = self._embedding_file(v, model_fp, task)
        self.used_embeddings.add(path)
        if self._is_cached(path, fp):
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        if isinstance(model, Path):  # a directory: its worker should have written the file
            raise ArtifactError(f"{path}: the embeddings of {v.name!r} were not written")
        arrays: dict[str, np.ndarray] = {"fingerprint": np.array(fp)}
        splits = (("train", task.train), ("val", task.val), ("test", task.test))
        for k, (split, posts) in enumerate(splits):
            if task.kind == "retrieval" and split != "test":
                posts = []  # retrieval ranks test posts among themselves: no classifier to train
            ntus = fed = e_ctl = None
            if v.control is not None:  # negative control: substituted e_ntu rows
                if emb is None:
                    raise ConfigError(f"{v.name}: a control needs NTU embeddings")
                seed = [self.cfg.eval.seed, k]
                ntus = control_ntus(v.control, posts, emb, v.ntu_types, seed)
                if v.concat == "per_type":  # the appended rows: each type's, one permutation
                    appended = [control_ntus(v.control, posts, emb, g, seed) for g in _groups(v)]
                    e_ctl = np.concatenate(appended, axis=1)
                # The model reads its own NTU types. A post-concat variant may append other
                # types (e.g. the author alone): the model is then fed its own types' rows under
                # the same substitution (the permutation depends on the seed and the split only,
                # so each post gets the same other post's NTUs in both places).
                # A per-type model is fed its (N, K, D) rows under that same permutation.
                if model.use_ntu:
                    own = model.cfg.ntu_types if model.cfg is not None else v.ntu_types
                    per_type = model.cfg is not None and model.cfg.ntu_tokens == "per_type"
                    fed = (
                        ntus
                        if own == v.ntu_types and not per_type
                        else control_ntus(v.control, posts, emb, own, seed, per_type=per_type)
                    )
            x = self._encode(model, model_fp, posts, v.pooling, fed)
            if v.post_concat_of is not None:
                if emb is None:
                    raise ConfigError(f"{v.name}: post-concat needs NTU embeddings")
                if ntus is None:
                    e_ntu = appended_ntus(v, posts, emb)
                else:
                    e_ntu = scaled(v, e_ctl if v.concat == "per_type" else ntus)
                x = np.concatenate([x, e_ntu], axis=1)
            x = np.asarray(x, dtype=np.float32)
            if split == "train" and v.unknown_ntu_train > 0 and posts:
                self._forget_ntus(v, model, model_fp, task.name, posts, x, emb)
            arrays[split] = x
            # row i of the split is post ids[i]: the file can be used without rebuilding the task
            arrays[f"{split}_ids"] = np.array([q.id for q in posts], dtype=np.str_)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return arrays

    def prune_embeddings(self) -> dict[str, int]:
        """Delete the cached embedding files under ``embeddings/`` that this run neither read
        nor wrote: those of other settings, models or seeds, and old-layout ``<task>.npz``
        files (``ntulm run --prune-embeddings``). The cache keeps every key it has seen, so a
        directory re-run with many settings grows by a file per task and setting."""
        root = self.out / "embeddings"
        files = size = 0
        if root.is_dir():
            for path in sorted(root.glob("*/*.npz")):
                if path in self.used_embeddings:
                    continue
                size += path.stat().st_size
                path.unlink()
                files += 1
            for d in root.iterdir():
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
        log.info("embeddings: pruned %d unused cache files (%.1f MB)", files, size / 1e6)
        return {"files": files, "bytes": size}

    def _forget_ntus(
        self,
        v: VariantSpec,
        model: NTULM,
        model_fp: str,
        task_name: str,
        posts: list[Post],
        x: np.ndarray,
        emb: NTUEmbeddings | None,
    ) -> None:
        """The downstream NTU dropout (``unknown_ntu_train``): rewrite in place the rows of ``x``
        of a seeded share of the training ``posts`` with their embedding as posts whose NTUs of
        :meth:`VariantSpec.unknown_types` are unknown: the model is fed the e_ntu it computes
        for such a post, and an appended e_ntu is computed the same way."""
        if emb is None:
            raise ConfigError(f"{v.name}: unknown_ntu_train needs NTU embeddings")
        idx = unknown_subset(len(posts), v.unknown_ntu_train, [self.cfg.eval.seed, task_name])
        if not len(idx):
            return
        sub = [posts[i] for i in idx]
        drop = v.unknown_types()
        if model.use_ntu:  # re-encode them with their NTU input as the model sees unknown NTUs
            if model.cfg is None:
                raise ConfigError(f"{v.name}: unknown_ntu_train needs the model's LM config")
            fed = ntu_inputs(sub, emb, model.cfg, drop)[0]
            text = self._encode(model, model_fp, sub, v.pooling, fed)
        else:  # the text part does not see NTUs
            width = emb.dim * len(_groups(v)) if v.post_concat_of is not None else 0
            text = x[idx, : x.shape[1] - width]
        parts = [text]
        if v.post_concat_of is not None:
            parts.append(appended_ntus(v, sub, emb, drop))
        x[idx] = np.concatenate(parts, axis=1)

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(
        self,
        tasks: list[tuple[TaskSpec, Task]],
        models: dict[str, tuple[NTULM | Path, str]],
        emb: NTUEmbeddings | None,
        flags: dict[str, np.ndarray],
        seeds: list[int],
        finetune_seed: int | None = None,
    ) -> list[dict[str, Any]]:
        """Every variant on every task and seed; ``models`` maps model variants to (model, fp),
        the model loaded or its directory (then encoded in workers, :meth:`embed_in_workers`)."""
        self.embed_in_workers(tasks, models)
        runs = []
        for k, v in enumerate(self.cfg.variants):
            self.stage(
                f"evaluate {v.name}: embed and train the MLPs on {len(tasks)} task(s) x "
                f"{len(seeds)} seed(s)",
                "evaluate",
                len(self.cfg.variants) - k - 1,
            )
            model, fp = models[v.post_concat_of or v.model_of or v.name]
            for spec, task in tasks:
                arrays = self.embeddings(v, model, fp, task, emb)
                lookup = _lookup(task, arrays)
                name = v.name if finetune_seed is None else f"{v.name} (ft seed {finetune_seed})"
                for seed in seeds:
                    res = evaluate_task(
                        task, lookup, self.cfg.eval, seed=seed, overlap=flags[task.name], model=name
                    )
                    res.update(
                        variant=v.name, family=_family(spec, task), finetune_seed=finetune_seed
                    )
                    runs.append(res)
            # free the encoder memo of a model and pooling no later variant embeds with
            later = {
                f"{models[u.post_concat_of or u.model_of or u.name][1]}:{u.pooling}"
                for u in self.cfg.variants[k + 1 :]
            }
            for key in [key for key in self._memo if key not in later]:
                del self._memo[key]
            trim()
        return runs

    def embed_in_workers(
        self, tasks: list[tuple[TaskSpec, Task]], models: dict[str, tuple[NTULM | Path, str]]
    ) -> None:
        """Write the cached embeddings of every variant whose model is given as a directory:
        one worker process per model (:func:`~ntulm.workers.run_isolated`), which loads it and
        runs :meth:`embeddings` for its variants in config order, exactly as this process would
        (the same encoder memo, so the same numbers), and ends, giving its memory back."""
        groups: dict[str, list[VariantSpec]] = {}
        for v in self.cfg.variants:
            groups.setdefault(v.post_concat_of or v.model_of or v.name, []).append(v)
        kge = self.out / "kge"
        for key, variants in groups.items():
            model, fp = models[key]
            if not isinstance(model, Path):  # loaded here (isolate_stages: false)
                continue
            if all(
                self._is_cached(*self._embedding_file(v, fp, t)) for v in variants for _, t in tasks
            ):
                continue
            run_isolated(
                _embed_job,
                self.cfg.model_dump(mode="json"),
                str(self.out),
                str(model),
                fp,
                [v.name for v in variants],
                [t for _, t in tasks],
                str(kge) if kge.exists() else None,
            )

    def _encode(
        self,
        model: NTULM,
        model_fp: str,
        posts: list[Post],
        pooling: str = "mean",
        ntus: np.ndarray | None = None,
    ) -> np.ndarray:
        """Encode with a per-model memo: tasks built from one corpus share most posts. Given
        e_ntu rows (``ntus``, a control) bypass the memo: they are not the posts' own."""
        from ntulm.lm.encode import encode, output_dim

        if ntus is not None:
            kw = {"batch_size": self.cfg.eval.embed_batch_size, "dtype": self.embed_dtype}
            if not posts:
                return np.zeros((0, output_dim(model, pooling, False)), np.float32)
            return encode(model, posts, ntus=ntus, pooling=pooling, concat_ntu=False, **kw)
        memo = self._memo.setdefault(f"{model_fp}:{pooling}", {})
        keys = [(q.id, q.text, tuple(q.hashtags)) for q in posts]
        todo = list({k: q for k, q in zip(keys, posts, strict=True) if k not in memo}.items())
        if todo:
            x = encode(
                model,
                [q for _, q in todo],
                batch_size=self.cfg.eval.embed_batch_size,
                dtype=self.embed_dtype,
                pooling=pooling,
                concat_ntu=False,  # a variant appends e_ntu itself (post_concat_of)
            )
            memo.update((k, row) for (k, _), row in zip(todo, x, strict=True))
        if not keys:
            return np.zeros((0, output_dim(model, pooling, False)), np.float32)
        return np.stack([memo[k] for k in keys]).astype(np.float32)


def run_pipeline(
    config: PipelineConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    prune_embeddings: bool = False,
) -> dict[str, Any]:
    """Run every stage (reusing finished ones) and write ``results.json`` and the report.
    ``prune_embeddings``: once every run is evaluated, delete the embedding cache files this run
    did not use (:meth:`Pipeline.prune_embeddings`); ``results["stages"]["pruned"]`` counts them."""

    with output_lock(out_dir):  # one run per directory; a dead run's leftovers removed
        return _run_pipeline(config, out_dir, progress, prune_embeddings)


def _run_pipeline(
    config: PipelineConfig, out_dir: str | Path, progress: bool, prune: bool = False
) -> dict[str, Any]:
    from ntulm.pipeline.report import write_report

    cfg = config
    p = Pipeline(cfg, out_dir, progress=progress)
    p.out.mkdir(parents=True, exist_ok=True)
    write_text(p.out / "config.json", cfg.to_json() + "\n")
    t0 = time.perf_counter()
    ft_seeds = cfg.seeds if cfg.finetune_per_seed else [cfg.lm.seed]
    n_ft, n_ev = len(cfg.model_variants()) * len(ft_seeds), len(cfg.variants) * len(ft_seeds)
    p.stage.n = 5 + n_ft + n_ev
    p.stage("posts: reading the corpus into the posts table")
    table = p.read_corpus()
    protocol = p.resolve_protocol(table)
    p.stage("tasks: building the downstream tasks")
    tasks = p.build_tasks(table)
    exclude = sorted({i for _, t in tasks for i in t.exclude_from_graph})
    edges = sorted({e for _, t in tasks for e in t.exclude_edges}, key=str)
    p.stage("graph: building the NTU graph from the posts table")
    graph_fp = p.graph(exclude, edges)
    p.stage(f"kge: training NTU embeddings ({cfg.kge.num_epochs} epochs)")
    emb, kge_fp = p.kge(graph_fp)

    sample = finetune_sample(table, tasks, cfg, p.temporal, held=p.lm_held)
    table.close()
    trim()  # the task building's and the posts table's freed buffers
    overlap_types = cfg.overlap_types()
    flags = overlap_flags(tasks, emb, overlap_types)

    runs: list[dict[str, Any]] = []
    lm_results: dict[str, list[dict]] = {}
    for ft_seed in ft_seeds:
        models: dict[str, tuple[NTULM | Path, str]] = {}
        for v in cfg.model_variants():
            n_ft -= 1
            steps = (
                f"{cfg.lm.max_steps} steps" if cfg.lm.max_steps else f"{cfg.lm.max_epochs} epochs"
            )
            p.stage(f"fine-tune {v.name} (seed {ft_seed}, {steps})", "fine-tune", n_ft)
            d, fp, res = p.finetune(v, ft_seed, sample, emb, kge_fp)
            lm_results.setdefault(v.name, []).append(res)
            # isolated: a directory, encoded in a worker (embed_in_workers); else loaded here
            models[v.name] = (
                d if cfg.isolate_stages else _load_model(d, emb, p.embed_device),
                fp,
            )
        eval_seeds = [ft_seed] if cfg.finetune_per_seed else cfg.seeds
        runs += p.evaluate(tasks, models, emb, flags, eval_seeds, finetune_seed=ft_seed)
    results = {
        "name": cfg.name,
        "config": cfg.model_dump(mode="json"),
        "protocol": protocol,
        "embed_dtype": p.embed_dtype,
        "embed_device": p.embed_device,
        "corpus": p.read_report,
        "graph": p.graph_stats,
        "kge": p.kge_metrics,
        "lm": lm_results,
        "tasks": {t.name: {"family": _family(s, t), **t.summary()} for s, t in tasks},
        "overlap_types": overlap_types,
        "runs": runs,
        "stages": {
            "ran": p.ran,
            "reused": p.reused,
            "seconds": {k: round(x, 1) for k, x in p.timings.items()},
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if prune:  # only once every run is evaluated: a failed run may not have reached every file
        results["stages"]["pruned"] = p.prune_embeddings()
    p.stage("report")
    write_report(results, p.out)
    p.stage.close()
    return results


def _load_model(d: Path, emb: NTUEmbeddings | None, device: str = "cpu") -> NTULM:
    """A finished model, on ``device`` (where :func:`~ntulm.lm.encode.encode` then runs)."""
    from ntulm.lm.model import NTULM

    return NTULM.load(d, ntu=emb).to(device)


def _kge_job(graph: str, out: str, cfg: Any, progress: bool) -> None:
    """The NTU embeddings, in a worker process (:meth:`Pipeline.kge`); written to ``out``."""
    train_kge(graph, out, cfg, progress=progress)


def _finetune_job(
    sample: list[Post], lcfg: dict, out: str, kge_dir: str | None, resume: bool, lean: bool = False
) -> dict[str, Any]:
    """One fine-tune, in a worker process (:meth:`Pipeline.finetune`): its result as JSON."""
    if lean:  # this process only fine-tunes: before its first tensor (ntulm.memory)
        tune_allocator()
    from ntulm.lm.train import finetune

    ntu = NTUEmbeddings.load(kge_dir) if kge_dir is not None else None
    cfg = LMConfig.model_validate(lcfg)
    return finetune(sample, cfg, out, ntu=ntu, resume=resume).to_json()


def _embed_job(
    cfg: dict,
    out: str,
    model_dir: str,
    model_fp: str,
    names: list[str],
    tasks: list[Task],
    kge_dir: str | None,
) -> None:
    """The cached embeddings of the variants ``names`` of one model, in a worker process
    (:meth:`Pipeline.embed_in_workers`)."""
    p = Pipeline(PipelineConfig.model_validate(cfg), out, progress=False)
    emb = NTUEmbeddings.load(kge_dir) if kge_dir is not None else None
    model = _load_model(Path(model_dir), emb, p.embed_device)
    variants = {v.name: v for v in p.cfg.variants}
    for name in names:
        for task in tasks:
            p.embeddings(variants[name], model, model_fp, task, emb)


def _groups(v: VariantSpec) -> list[list[str]]:
    """The NTU type groups a post-concat variant appends one e_ntu each of (``concat``)."""
    return concat_groups(v.ntu_types, v.concat == "per_type")


def appended_ntus(
    v: VariantSpec, posts: list[Post], emb: NTUEmbeddings, unknown: Collection[str] = ()
) -> np.ndarray:
    """The NTU rows a post-concat variant appends: e_ntu of its ``ntu_types`` (N, D), or with
    ``concat: per_type`` one e_ntu per type side by side (N, K*D). ``unknown``: types whose NTUs
    count as unknown (the downstream NTU dropout). Each block is weighted by ``concat_scale``."""
    return scaled(v, appended_vectors(posts, emb, v.ntu_types, v.concat == "per_type", unknown))


def scaled(v: VariantSpec, e: np.ndarray) -> np.ndarray:
    """Appended rows ``e`` (N, K*D) with each block multiplied by its ``concat_scale`` weight."""
    w = v.block_scale(e.shape[1] // len(_groups(v)))
    return e if w is None else (e * w).astype(np.float32)


def finetune_sample(
    posts: PostsTable | list[Post],
    tasks: list[tuple[TaskSpec, Task]],
    cfg: PipelineConfig,
    temporal: Temporal | None = None,
    held: Collection[str] | None = None,
) -> list[Post]:
    """The MLM fine-tuning sample: ``cfg.lm_posts`` corpus posts (seeded by ``cfg.lm.seed``)
    that no task validates or tests on, in corpus order; under the temporal protocol only posts
    strictly before the cutoff. Over a posts table, only the sampled posts become objects.
    ``held``: the ids to leave out, if not those of ``tasks`` (a design run passes those of the
    tasks before their splits were replaced, :attr:`Pipeline.lm_held`)."""
    held = sorted(
        set(held) if held is not None else {q.id for _, t in tasks for q in (*t.val, *t.test)}
    )
    if isinstance(posts, PostsTable):
        posts.con.execute("CREATE OR REPLACE TEMP TABLE _held AS SELECT unnest($1) AS id", [held])
        out = posts.con.execute("SELECT rid FROM posts SEMI JOIN _held USING (id)").fetchnumpy()
        pool = np.setdiff1d(np.arange(len(posts), dtype=np.int64), out["rid"])
    else:
        held_set = set(held)
        pool = np.array([i for i, q in enumerate(posts) if q.id not in held_set], dtype=np.int64)
    if temporal is not None:
        pool = pool[temporal.period[pool] == BEFORE]
    take = np.random.default_rng(cfg.lm.seed).permutation(len(pool))[: cfg.lm_posts]
    rids = pool[np.sort(take)]
    if isinstance(posts, PostsTable):
        return posts.take(rids)
    return [posts[int(i)] for i in rids]


def unknown_subset(n: int, rate: float, seed: list[int | str]) -> np.ndarray:
    """The sorted positions of ``round(rate * n)`` of ``n`` training posts, drawn with a seeded
    generator (``seed``: the eval seed and the task's name), for ``unknown_ntu_train``."""
    ints = [s if isinstance(s, int) else zlib.crc32(s.encode()) for s in seed]
    take = int(round(rate * n))
    return np.sort(np.random.default_rng(ints).permutation(n)[:take])


def task_content_key(task: Task) -> str:
    """A hash of every post that goes into each split (id, text, hashtags, author, in order):
    cached embeddings are reused only for exactly the posts they were computed from."""
    h = hashlib.sha256()
    for split in ("train", "val", "test"):
        h.update(f"\x00{split}\x00".encode())
        for q in getattr(task, split):
            author = q.author.key if q.author is not None else ""
            h.update(json.dumps([q.id, q.text, q.hashtags, author]).encode())
            h.update(b"\n")
    return h.hexdigest()[:32]


def overlap_flags(
    tasks: list[tuple[TaskSpec, Task]], emb: NTUEmbeddings | None, types: list[str]
) -> dict[str, np.ndarray]:
    """Per task, whether each test post has a known NTU of ``types`` (all False without a table)."""
    return {
        t.name: (
            ntu_vectors(t.test, emb, types)[1]
            if emb is not None and types
            else np.zeros(len(t.test), dtype=bool)
        )
        for _, t in tasks
    }


def _family(spec: TaskSpec, task: Task) -> str:
    return "TweetEval" if spec.type == "tweeteval" else task.name


def _lookup(task: Task, arrays: dict[str, np.ndarray]):
    """An EmbedFn over the cached arrays: it recognises the task's split lists by identity."""
    splits = {id(task.train): "train", id(task.val): "val", id(task.test): "test"}

    def embed(posts: list[Post]) -> tuple[np.ndarray, np.ndarray]:
        split = splits.get(id(posts))
        if split is None:
            raise ValueError("embedding cache: posts are not one of the task's splits")
        x = arrays[split]
        return x, np.zeros(len(x), dtype=bool)

    return embed
