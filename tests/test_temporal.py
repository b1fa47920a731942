"""The temporal protocol: cutoff resolution, task splits, and what the graph, the NTU embeddings
and the fine-tuning sample may see (``evaluate/temporal.py``, ``ntulm run``)."""

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest

from ntulm.errors import ConfigError
from ntulm.evaluate import EvalConfig, build_tasks
from ntulm.evaluate.splits import author_key
from ntulm.evaluate.temporal import AFTER, BEFORE, NO_TIME, periods, resolve_cutoff, temporal
from ntulm.graph import GraphConfig
from ntulm.graph.build import build_graph, read_posts_table
from ntulm.kge import NTUEmbeddings
from ntulm.pipeline import PipelineConfig
from ntulm.pipeline.run import finetune_sample, run_pipeline
from ntulm.posts import Post, PostReader
from ntulm.posts.rows import PostsTable
from ntulm.synthetic import generate_posts

TASKS = [
    {"type": "classification", "name": "community", "label": "community", "split_by": "author",
     "min_class_count": 2},
    {"type": "classification", "name": "stance", "label": "stance"},
    {"type": "hashtag", "top_k": 6, "per_class": 8},
    {"type": "retrieval", "name": "community_map", "label": "community", "split_by": "author",
     "max_test": 40, "min_class_count": 2},
]  # fmt: skip


def _time(p: Post) -> datetime | None:
    try:
        t = datetime.fromisoformat(p.created_at.replace("Z", "+00:00"))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        return None
    return (
        t.replace(tzinfo=None)
        if t.tzinfo is None
        else t.astimezone(timezone.utc).replace(tzinfo=None)
    )


def _write(path, n_posts=600, seed=5, untimed_every=25):
    """A synthetic corpus; every ``untimed_every``-th post has no time, one an unreadable one;
    posts on or after June 10 also carry the hashtag #late and mention @lateuser (so a leak
    into the graph shows as a node)."""
    with open(path, "w", encoding="utf-8") as fh:
        for i, rec in enumerate(generate_posts(n_posts=n_posts, users_per_community=8, seed=seed)):
            if rec["created_at"] >= "2022-06-10":
                rec["text"] += " #late @lateuser"
            if i % untimed_every == 3:
                del rec["created_at"]
            elif i == 4:
                rec["created_at"] = "sometime in June"
            fh.write(json.dumps(rec) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("temporal")
    path = _write(d / "posts.jsonl")
    posts = [p for p, _ in PostReader().iter_posts([path])]
    read_posts_table([path], GraphConfig(), d / "table", None, progress=False)
    table = PostsTable(d / "table")
    yield posts, table
    table.close()


def test_times_in_every_format_and_the_quantile_cutoff():
    stamps = [  # distinct instants, shuffled, in the formats the readers write
        "2017-01-05T10:00:00",  # IRA publish_date (no offset: UTC)
        "2017-01-01T00:00:00+00:00",  # Twitter v1.1 after the reader
        "2017-01-03T12:00:00.000Z",  # Twitter v2 / JSON Lines
        "2017-01-02T03:00:00+02:00",  # 01:00 UTC
        "2017-01-04T00:00:00",
        "2017-01-09T00:00:00",
        "2017-01-07T00:00:00",
        "2017-01-06T00:00:00",
        "2017-01-10T00:00:00",
        "2017-01-08T00:00:00",
    ]
    posts = [Post(id=str(i), text="x", created_at=s) for i, s in enumerate(stamps)]
    posts += [Post(id="n", text="x"), Post(id="g", text="x", created_at="yesterday")]
    # quantile_disc at 0.8 of 10 times: the 8th smallest (index floor(0.8 * 9) = 7)
    assert resolve_cutoff(posts, quantile=0.8) == "2017-01-08 00:00:00"
    t = temporal(posts, quantile=0.8)
    assert t.counts() == {"posts_before": 7, "posts_after": 3, "posts_without_time": 2}
    assert t.to_json()["cutoff_given"] == "quantile 0.8"
    # a date is its midnight; an offset moves the instant; the +02:00 post is 01:00 UTC
    assert resolve_cutoff(posts, cutoff=datetime(2017, 1, 2).date()) == "2017-01-02 00:00:00"
    k = periods(posts, resolve_cutoff(posts, cutoff="2017-01-02T02:30:00+01:00"))
    assert k.tolist()[:4] == [AFTER, BEFORE, AFTER, BEFORE] and k.tolist()[-2:] == [NO_TIME] * 2
    at = periods(posts, resolve_cutoff(posts, cutoff="2017-01-02T02:00:00+01:00"))
    assert at[3] == AFTER  # exactly at the cutoff: after it
    for bad in ({}, {"cutoff": "2017-01-01", "quantile": 0.5}, {"quantile": 1.0}):
        with pytest.raises(ValueError):
            resolve_cutoff(posts, **bad)


def test_periods_of_a_table_equal_those_of_the_posts(corpus):
    posts, table = corpus
    a, b = temporal(posts, quantile=0.7), temporal(table, quantile=0.7)
    assert a.at == b.at and np.array_equal(a.period, b.period)
    for p, k in zip(posts, a.period, strict=True):
        t = _time(p)
        assert k == (
            NO_TIME if t is None else BEFORE if t < datetime.fromisoformat(a.at) else AFTER
        )
    assert a.counts()["posts_without_time"] == 24 + 1  # every 25th post, and the unreadable one


@pytest.mark.parametrize("train_from", ["before", "any"])
@pytest.mark.parametrize("spec", TASKS, ids=[t["type"] + ":" + t.get("name", "") for t in TASKS])
def test_every_val_and_test_post_is_at_or_after_the_cutoff(corpus, spec, train_from):
    posts, table = corpus
    t = temporal(table, quantile=0.6, train_from=train_from)
    cut = datetime.fromisoformat(t.at)
    cfg = EvalConfig.build({"tasks": [spec]})
    (task,) = build_tasks(cfg.tasks[0], table, seed=3, temporal=t)
    (same,) = build_tasks(
        cfg.tasks[0], posts, seed=3, temporal=temporal(posts, quantile=0.6, train_from=train_from)
    )
    assert [p.id for p in task.test] == [p.id for p in same.test]  # table == list of posts
    assert task.test and all(_time(p) is not None and _time(p) >= cut for p in task.test)
    assert all(_time(p) is not None and _time(p) >= cut for p in task.val)
    times = [_time(p) for p in task.train]
    assert None not in times  # posts without time are in no split
    if train_from == "before":
        assert all(x < cut for x in times)
    elif spec["type"] != "retrieval":  # (retrieval keeps a sample of train only)
        assert any(x >= cut for x in times) and any(x < cut for x in times)
    if spec.get("split_by") == "author":  # a val/test author is never trained on
        held = {author_key(p) for p in (*task.val, *task.test)}
        assert held and not held & {author_key(p) for p in task.train}
    assert task.info["posts_after_cutoff"] > 0 and "posts_without_time" in task.info
    # the paper protocol over the same corpus is another split (times ignored)
    (paper,) = build_tasks(cfg.tasks[0], table, seed=3)
    assert any(_time(p) is None or _time(p) < cut for p in (*paper.val, *paper.test))


def test_finetune_sample_is_before_the_cutoff(corpus):
    posts, table = corpus
    cfg = PipelineConfig.build(
        {
            "posts": ["x"],
            "lm_posts": 10_000,
            "protocol": "temporal",
            "cutoff_quantile": 0.5,
            "eval": {"tasks": TASKS[1:2]},
        }  # fmt: skip
    )
    t = temporal(table, quantile=0.5)
    tasks = [(s, x) for s in cfg.eval.tasks for x in build_tasks(s, table, 13, temporal=t)]
    sample = finetune_sample(table, tasks, cfg, t)
    cut = datetime.fromisoformat(t.at)
    assert len(sample) == t.counts()["posts_before"]  # all of them: lm_posts is larger
    assert all(_time(p) is not None and _time(p) < cut for p in sample)
    assert sample == finetune_sample(posts, tasks, cfg, t)
    assert len(finetune_sample(table, tasks, cfg)) > len(sample)  # paper: every period


def test_config_validation():
    base = {"posts": ["x"], "eval": {"tasks": TASKS[1:2]}}
    ok = PipelineConfig.build({**base, "protocol": "temporal", "cutoff": "2017-01-01"})
    assert resolve_cutoff([], ok.cutoff) == "2017-01-01 00:00:00" and ok.train_from == "before"
    east = PipelineConfig.build(
        {**base, "protocol": "temporal", "cutoff": "2017-01-01T00:00+01:00"}
    )
    assert resolve_cutoff([], east.cutoff) == "2016-12-31 23:00:00"  # the offset is kept
    assert PipelineConfig.build({**base, "protocol": "temporal", "cutoff_quantile": 0.8})
    bad = [
        ({"protocol": "temporal"}, "exactly one of cutoff"),
        ({"protocol": "temporal", "cutoff": "2017-01-01", "cutoff_quantile": 0.5}, "exactly one"),
        ({"protocol": "temporal", "cutoff_quantile": 0.0}, "cutoff_quantile"),
        ({"protocol": "temporal", "cutoff_quantile": 1.0}, "cutoff_quantile"),
        ({"protocol": "temporal", "cutoff": "soon"}, "cutoff"),
        ({"cutoff": "2017-01-01"}, "only with protocol: temporal"),
        ({"cutoff_quantile": 0.5}, "only with protocol: temporal"),
        ({"train_from": "any"}, "only with protocol: temporal"),
        ({"protocol": "temporal", "cutoff_quantile": 0.5, "train_from": "later"}, "train_from"),
    ]
    for extra, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            PipelineConfig.build({**base, **extra})


def test_run_temporal_graph_kge_and_sample_see_only_pre_cutoff_posts(tmp_path, backbone):
    posts_file = _write(tmp_path / "posts.jsonl", n_posts=400)
    cfg = {
        "name": "tiny temporal",
        "posts": [str(posts_file)],
        "lm_posts": 100,
        "protocol": "temporal",
        "cutoff": "2022-06-10",
        "kge": {"dimension": 8, "num_epochs": 1, "batch_size": 500, "num_batch_negs": 10,
                "num_uniform_negs": 10},
        "lm": {"backbone": backbone, "max_steps": 2, "max_epochs": 1, "batch_size": 16,
               "head_warmup_steps": 0, "max_length": 32, "progress": False, "eval_max_posts": 20},
        "eval": {"mlp": {"max_epochs": 2, "num_threads": 1}, "tasks": TASKS[:1] + [
            {"type": "hashtag", "top_k": 4, "per_class": 6, "exclusion": "posts"}]},
        "variants": [{"name": "BERT", "use_ntu": False}, {"name": "N", "ntu_types": ["author", "hashtag"]}],
        "seeds": [1],
        "isolate_stages": False,  # quicker here; test_pipeline_memory.py runs the workers
    }  # fmt: skip
    out = tmp_path / "run"
    res = run_pipeline(PipelineConfig.build(cfg), out, progress=False)
    pr = res["protocol"]
    assert pr["protocol"] == "temporal" and pr["cutoff"] == "2022-06-10 00:00:00"
    assert pr["posts_without_time"] == 16 + 1 and pr["train_from"] == "before"
    assert pr["posts_before"] + pr["posts_after"] + pr["posts_without_time"] == 400
    # the graph equals the graph of the timed pre-cutoff posts alone
    all_posts = [p for p, _ in PostReader().iter_posts([posts_file])]
    early = [p for p in all_posts if _time(p) is not None and _time(p) < datetime(2022, 6, 10)]
    assert len(early) == pr["posts_before"]
    early_file = tmp_path / "early.jsonl"
    early_file.write_text("".join(json.dumps(p.to_json()) + "\n" for p in early))
    ref = tmp_path / "ref_graph"
    build_graph([early_file], ref, PipelineConfig.build(cfg).graph, progress=False)
    for name in ("edges.parquet", "nodes_user.parquet", "nodes_hashtag.parquet"):
        assert pq.read_table(out / "graph" / name).equals(pq.read_table(ref / name)), name
    assert res["graph"]["posts_filtered_out"] == 400 - pr["posts_before"]
    # the KGE trained on those edges only: no post-cutoff NTU has a vector
    hashtags = pq.read_table(out / "graph" / "nodes_hashtag.parquet").column("key").to_pylist()
    emb = NTUEmbeddings.load(out / "kge")
    assert "late" not in hashtags and emb.lookup_hashtag("late") is None
    assert emb.lookup_hashtag(hashtags[0]) is not None
    assert (
        "lateuser"
        not in pq.read_table(out / "graph" / "nodes_user.parquet").column("handle").to_pylist()
    )
    report = (out / "report.md").read_text()
    assert "Protocol: temporal, cutoff 2022-06-10 00:00:00 UTC" in report
    assert "17 without a time" in report and "TweetEval has no times" in report
    assert "| community | " in report.split("Temporal protocol, per corpus task")[1]
    # another cutoff re-runs the graph and everything after it; the same one reuses them
    again = run_pipeline(PipelineConfig.build(cfg), out, progress=False)
    assert "graph" in again["stages"]["reused"] and "kge" in again["stages"]["reused"]
    moved = run_pipeline(PipelineConfig.build({**cfg, "cutoff": "2022-06-09"}), out, progress=False)
    assert {"graph", "kge", "finetune N", "finetune BERT"} <= set(moved["stages"]["ran"])
    with pytest.raises(ConfigError, match="no post at or after the cutoff 2030-01-01"):
        run_pipeline(PipelineConfig.build({**cfg, "cutoff": "2030-01-01"}), out, progress=False)


def test_protocols_and_the_temporal_preset():
    from pathlib import Path
    from typing import get_args

    from ntulm.evaluate.protocol import PROTOCOLS

    assert get_args(PipelineConfig.model_fields["protocol"].annotation) == PROTOCOLS
    bench = Path(__file__).parents[1] / "benchmarks"
    t = PipelineConfig.from_sources(bench / "paper_cpu_temporal.yaml", []).model_dump()
    # its paper-protocol twin: the same variants and fine-tuning seeds (issue 10's presets)
    p = PipelineConfig.from_sources(bench / "paper_cpu_seeds.yaml", []).model_dump()
    assert t["protocol"] == "temporal" and 0 < t["cutoff_quantile"] < 1
    assert {k for k in t if t[k] != p[k]} == {"name", "protocol", "cutoff_quantile"}


def test_saved_models_refuse_the_temporal_protocol(tmp_path):
    from ntulm.pipeline.evaluate import evaluate_saved

    cfg = PipelineConfig.build(
        {
            "posts": ["x"],
            "protocol": "temporal",
            "cutoff": "2017-01-01",
            "eval": {"tasks": TASKS[1:2]},
        }  # fmt: skip
    )
    with pytest.raises(ConfigError, match="protocol temporal: saved models"):
        evaluate_saved(cfg, {}, tmp_path / "out")
