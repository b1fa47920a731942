"""``ntulm evaluate``: the downstream evaluation and report for models that are already fine-tuned.

``ntulm run`` trains every model itself; this evaluates saved ``ntulm finetune`` directories (any
mix of NTULM and no-NTU models, plus BERT-post-concat over a no-NTU one) on the tasks of an
``eval`` config, with the same MLP, seeds, overlap analysis, tables and figures. Post embeddings
are cached under ``<out>/embeddings`` keyed by each model directory's content, so re-running with
another task or seed encodes only what is new.

The hashtag task is refused when a model (or post-concat) uses NTU embeddings: its test posts'
edges must be left out of the graph those embeddings were trained on, and saved models cannot
show that they were. ``ntulm run`` builds the graph with them excluded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ntulm.artifacts import fingerprint, output_lock, read_json, require_done, write_text
from ntulm.errors import ArtifactError, ConfigError
from ntulm.kge import NTUEmbeddings
from ntulm.lm.model import LM_META, NTULM, STAGE
from ntulm.lm.train import RESULT
from ntulm.pipeline.config import PipelineConfig, VariantSpec
from ntulm.pipeline.run import Pipeline, overlap_flags


def model_fingerprint(model_dir: Path) -> str:
    """What identifies a saved model: its resolved path and the size and mtime of every file."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    return fingerprint(
        [str(model_dir.resolve())]
        + [[str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    )


def parse_model_args(items: list[str]) -> dict[str, Path]:
    """``NAME=DIR`` (or a bare ``DIR``, named after it) -> {name: dir}, validated."""
    models: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        name, d = name.strip(), Path(path)
        if not name:
            raise ConfigError(f"--model {item!r}: empty name (use NAME=DIR)")
        if name in models:
            raise ConfigError(f"--model {item!r}: the name {name!r} is given twice")
        if not (d / LM_META).exists():
            raise ArtifactError(f"--model {item!r}: {d} is not an `ntulm finetune` directory")
        models[name] = require_done(d, STAGE, "--model")  # not a fine-tune killed mid-way
    if not models:
        raise ConfigError("--model NAME=DIR: at least one model")
    return models


def evaluate_config(
    models: dict[str, Path],
    *,
    file: str | Path | None = None,
    overrides: list[str] | None = None,
    posts: list[str] | None = None,
    baseline: str | None = None,
    post_concat_of: str | None = None,
    post_concat_types: list[str] | None = None,
) -> PipelineConfig:
    """A :class:`PipelineConfig` whose variants are the saved models.

    ``file`` is any YAML with an ``eval`` section (and optionally ``seeds``, ``name``): an
    ``ntulm run`` config works as it is; its stage sections are ignored.
    """
    variants = []
    for name, d in models.items():
        meta = read_json(d / LM_META)
        variants.append(
            VariantSpec(
                name=name, use_ntu=bool(meta["use_ntu"]), ntu_types=meta.get("ntu_types") or []
            )
        )
    if post_concat_of is not None:
        variants.append(
            VariantSpec(
                name=f"{post_concat_of}-post-concat",
                post_concat_of=post_concat_of,
                ntu_types=post_concat_types or ["author", "hashtag"],
            )
        )
    if baseline is None:
        baseline = next((v.name for v in variants if not v.use_ntu), variants[0].name)
    base = {"name": "ntulm evaluate", "posts": list(posts or [])}
    cfg = PipelineConfig.from_sources(file, overrides, base=base)
    # Saved models define the variants; the stage sections of a run config do not apply.
    return PipelineConfig.build(
        {
            **cfg.model_dump(mode="json"),
            "posts": list(posts or []) or cfg.posts,
            "variants": [v.model_dump(mode="json") for v in variants],
            "baseline": baseline,
            "finetune_per_seed": False,
        },
        source=str(file or "ntulm evaluate"),
    )


def evaluate_saved(
    cfg: PipelineConfig,
    models: dict[str, Path],
    out_dir: str | Path,
    *,
    ntu: str | Path | None = None,
    progress: bool = True,
    prune_embeddings: bool = False,
) -> dict[str, Any]:
    """Evaluate saved models on ``cfg.eval.tasks`` and write ``results.json`` and the report.
    The run owns ``out_dir`` (:func:`~ntulm.artifacts.output_lock`). ``prune_embeddings``: as
    :func:`~ntulm.pipeline.run.run_pipeline`'s."""
    with output_lock(out_dir):
        return _evaluate_saved(cfg, models, out_dir, ntu, progress, prune_embeddings)


def _evaluate_saved(
    cfg: PipelineConfig,
    models: dict[str, Path],
    out_dir: str | Path,
    ntu: str | Path | None,
    progress: bool,
    prune: bool = False,
) -> dict[str, Any]:
    from ntulm.pipeline.report import write_report
    from ntulm.pipeline.run import _family

    t0 = time.perf_counter()
    p = Pipeline(cfg, out_dir, progress=progress)
    p.out.mkdir(parents=True, exist_ok=True)
    write_text(p.out / "config.json", cfg.to_json() + "\n")

    if cfg.protocol != "paper":
        raise ConfigError(
            f"protocol {cfg.protocol}: saved models cannot show what they were trained on; "
            "run the temporal protocol with `ntulm run`"
        )
    corpus_tasks = [s.name or s.type for s in cfg.eval.tasks if s.type != "tweeteval"]
    if corpus_tasks and not cfg.posts:
        raise ConfigError(
            f"tasks {', '.join(corpus_tasks)} are built from a corpus: give --posts (or `posts` "
            "in the config)"
        )
    loaded = {
        name: (NTULM.load(d).to(p.embed_device), model_fingerprint(d)) for name, d in models.items()
    }
    emb = NTUEmbeddings.load(require_done(ntu, "kge", "--ntu")) if ntu is not None else None
    if emb is None:  # the overlap flags and post-concat use one table: the first NTULM's
        emb = next((m.ntu for m, _ in loaded.values() if m.ntu is not None), None)
    uses_ntu = any(v.use_ntu or v.post_concat_of for v in cfg.variants)
    if uses_ntu and any(s.type == "hashtag" for s in cfg.eval.tasks):
        raise ConfigError(
            "hashtag task: its test posts must add no edges to the graph behind the NTU "
            "embeddings, which saved models cannot show; run it with `ntulm run`, or evaluate "
            "no-NTU models only"
        )
    if any(v.post_concat_of for v in cfg.variants) and emb is None:
        raise ConfigError("--post-concat needs NTU embeddings: give --ntu KGE_DIR")

    table = p.read_corpus() if cfg.posts else None
    if table is None:
        p.read_report = {"read": 0, "accepted": 0, "rejected": 0}
    tasks = p.build_tasks(table)
    if table is not None:
        table.close()
    overlap_types = cfg.overlap_types()
    flags = overlap_flags(tasks, emb, overlap_types)
    runs = p.evaluate(tasks, loaded, emb, flags, cfg.seeds)
    lm = {name: [read_json(d / RESULT)] for name, d in models.items() if (d / RESULT).exists()}
    results = {
        "name": cfg.name,
        "config": cfg.model_dump(mode="json"),
        "models": {name: str(d) for name, d in models.items()},
        "corpus": p.read_report,
        "lm": lm,
        "tasks": {t.name: {"family": _family(s, t), **t.summary()} for s, t in tasks},
        "overlap_types": overlap_types,
        "runs": runs,
        "stages": {"ran": ["evaluate"], "reused": [], "seconds": {}},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if prune:  # once every run is evaluated
        results["stages"]["pruned"] = p.prune_embeddings()
    write_report(results, p.out)
    return results
