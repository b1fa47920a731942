"""Tasks, fine-tuning sample and embedding cache key over the Parquet posts table."""

import numpy as np
import pytest

from ntulm.evaluate import EvalConfig, build_tasks
from ntulm.evaluate.splits import author_key
from ntulm.graph import GraphConfig
from ntulm.graph.build import read_posts_table
from ntulm.pipeline import PipelineConfig
from ntulm.pipeline.run import finetune_sample, task_content_key
from ntulm.posts import PostReader
from ntulm.posts.rows import PostsTable
from ntulm.synthetic import write_corpus

TASKS = [
    {"type": "classification", "name": "community", "label": "community", "split_by": "author",
     "max_per_class": 60, "min_class_count": 2},
    {"type": "classification", "name": "stance", "label": "stance"},
    {"type": "hashtag", "top_k": 8, "per_class": 10},
    {"type": "retrieval", "name": "community_map", "label": "community", "split_by": "author",
     "max_test": 40, "min_class_count": 2},
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    path = write_corpus(d / "posts.jsonl", n_posts=700, users_per_community=8, seed=7)
    posts = [p for p, _ in PostReader().iter_posts([path])]
    read_posts_table([path], GraphConfig(), d / "table", None, progress=False)
    table = PostsTable(d / "table")
    yield posts, table
    table.close()


def _ids(task):
    return [[p.id for p in getattr(task, s)] for s in ("train", "val", "test")]


def test_table_rows_are_the_posts_read(corpus):
    posts, table = corpus
    assert len(table) == len(posts)
    assert table.take(range(len(posts))) == posts
    assert table.take([5, 2, 5]) == [posts[5], posts[2], posts[5]]


def test_rows_to_posts_reads_slices_and_chunks(corpus):
    """Column by column over list offsets: a slice that starts mid-table, and a table of several
    chunks, give the posts of those rows (the fast readers' tables reach iter_posts so)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ntulm.posts.rows import rows_to_posts

    posts, table = corpus
    whole = pa.concat_tables(pq.read_table(p) for p in table.parts)
    assert any(p.mentions for p in posts) and any(p.favorited_by for p in posts)
    for a, b in ((0, 7), (3, 50), (123, 600), (650, 700), (10, 10)):
        assert rows_to_posts(whole.slice(a, b - a)) == posts[a:b]
    chunked = pa.concat_tables([whole.slice(5, 40), whole.slice(300, 90)])
    assert rows_to_posts(chunked) == posts[5:45] + posts[300:390]


@pytest.mark.parametrize("spec", TASKS, ids=[t["type"] + ":" + t.get("name", "") for t in TASKS])
def test_tasks_from_the_table_equal_tasks_from_posts(corpus, spec):
    posts, table = corpus
    cfg = EvalConfig.build({"tasks": [spec]})
    (a,) = build_tasks(cfg.tasks[0], posts, seed=3)
    (b,) = build_tasks(cfg.tasks[0], table, seed=3)
    assert _ids(a) == _ids(b) and a.classes == b.classes
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("y_train", "y_val", "y_test"))
    assert [p.text for p in a.test] == [p.text for p in b.test]  # hashtag removal alike
    assert a.exclude_from_graph == b.exclude_from_graph and a.info == b.info
    # what the spec asks
    train, val, test = (set(x) for x in _ids(b))
    assert not (train & val) and not (train & test) and not (val & test)
    if spec.get("split_by") == "author":
        keys = [{author_key(p) for p in getattr(b, s)} for s in ("train", "val", "test")]
        assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    if spec.get("max_per_class"):
        y = np.concatenate([b.y_train, b.y_val, b.y_test])
        assert np.bincount(y).max() <= spec["max_per_class"]
    if spec["type"] == "hashtag":
        y = np.concatenate([b.y_train, b.y_val, b.y_test])
        assert set(np.bincount(y).tolist()) == {spec["per_class"]}
        assert all(b.classes[y] not in p.hashtags for p, y in zip(b.test, b.y_test, strict=True))
    if spec["type"] == "retrieval":
        assert len(b.test) == len(b.train) == spec["max_test"]
        assert b.info["train_posts_total"] > spec["max_test"]


def test_finetune_sample_skips_val_and_test_posts(corpus):
    posts, table = corpus
    cfg = PipelineConfig.build({"posts": ["x"], "lm_posts": 200, "eval": {"tasks": TASKS}})
    tasks = [(s, t) for s in cfg.eval.tasks for t in build_tasks(s, table, cfg.eval.seed)]
    sample = finetune_sample(table, tasks, cfg)
    held = {q.id for _, t in tasks for q in (*t.val, *t.test)}
    assert len(sample) == 200 and held and not held & {q.id for q in sample}
    assert [q.id for q in sample] == sorted(q.id for q in sample)  # corpus order
    assert sample == finetune_sample(posts, tasks, cfg)  # the same from a list


def test_embedding_cache_key_follows_every_split_post(corpus):
    posts, table = corpus
    cfg = EvalConfig.build({"tasks": [TASKS[0]]})
    (task,) = build_tasks(cfg.tasks[0], table, seed=3)
    key = task_content_key(task)
    assert key == task_content_key(build_tasks(cfg.tasks[0], table, seed=3)[0])
    seen = {key}
    for split, i in (("train", -1), ("val", 0), ("test", 7)):
        for field, value in (("id", "other"), ("text", "changed text")):
            (t,) = build_tasks(cfg.tasks[0], table, seed=3)
            setattr(getattr(t, split)[i], field, value)
            seen.add(task_content_key(t))
    (t,) = build_tasks(cfg.tasks[0], table, seed=3)
    t.val.append(t.train.pop())  # a post moved from one split to another
    seen.add(task_content_key(t))
    assert len(seen) == 8


def test_stage_log_counts_stages_and_estimates_what_is_left(caplog, monkeypatch):
    import logging

    from ntulm.pipeline import progress

    clock = iter([0.0, 0.0, 30.0, 30.0, 41.0, 41.0] + [50.0] * 4)
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="ntulm.pipeline"):
        stages = progress.StageLog(3)
        stages("fine-tune A", "fine-tune", 1)
        stages("fine-tune B", "fine-tune", 0)
        stages("report")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("stage 1/3: fine-tune A (0 s elapsed)")
    assert (
        lines[1]
        == "stage 2/3: fine-tune B (30 s elapsed; ~30 s for this and 0 more fine-tune stage(s))"
    )
    assert lines[2].startswith("stage 3/3: report")
    quiet = progress.StageLog(3, enabled=False)
    caplog.clear()
    quiet("x")
    assert not caplog.records
