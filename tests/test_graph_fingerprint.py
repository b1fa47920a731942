"""The graph stage's cache fingerprint holds what decides the graph's content, nothing else: an
engine, worker count or memory setting, or a new field at its neutral default, reuses a cached
graph (and so the NTU embeddings and models made from it); a content change does not."""

from __future__ import annotations

import pytest

from ntulm.artifacts import fingerprint, mark_run
from ntulm.graph import GraphConfig
from ntulm.pipeline import PipelineConfig
from ntulm.pipeline.run import Pipeline

SAME = [
    {"engine": "spark"},
    {"spark_master": "local[2]", "spark_conf": {"spark.driver.memory": "8g"}},
    {"read_workers": 3},
    {"threads": 2},
    {"memory_limit": "1GB"},
    {"batch_size": 7},
    {"read": {"engine": "python", "quarantine": False}},  # the posts: the table's fingerprint
]
OTHER = [
    {"relations": ["authored"]},
    {"min_user_hashtags": 2},
    {"max_user_hashtags": 9},
    {"min_hashtag_posts": 2},
    {"weighting": "dedup"},
    {"exclude_posts": "ids.txt"},
]


@pytest.mark.parametrize("change", SAME)
def test_settings_that_cannot_change_the_graph_leave_its_key(change):
    assert GraphConfig(**change).content_key() == GraphConfig().content_key()


@pytest.mark.parametrize("change", OTHER)
def test_content_fields_change_its_key(change):
    assert GraphConfig(**change).content_key() != GraphConfig().content_key()


def test_the_key_of_a_default_config_holds_only_the_first_versions_fields():
    # A content field added later must join GraphConfig.NEUTRAL (left out at its neutral value),
    # or every cached graph is rebuilt; a setting that cannot change the graph, NOT_CONTENT.
    assert set(GraphConfig().content_key()) == {
        "relations",
        "weighting",
        "min_user_hashtags",
        "max_user_hashtags",
        "min_hashtag_posts",
    }
    assert set(GraphConfig.model_fields) == (
        set(GraphConfig().content_key()) | GraphConfig.NOT_CONTENT | set(GraphConfig.NEUTRAL)
    )


def test_legacy_key_is_the_dump_of_the_version_before_the_read_section():
    # fingerprints of GraphConfig().model_dump(mode="json") etc. as that version computed them
    assert fingerprint(GraphConfig().legacy_key()) == "ce80e8a8f6fa0677"
    assert fingerprint(GraphConfig.paper().legacy_key()) == "4c23c0ee27ed4bc5"
    cfg = GraphConfig(
        relations=["authored", "co_mentioned", "retweeted"],
        columns="ira",
        labels=[{"path": "x.csv"}],
        strict=True,
        reader="python",
    )
    assert fingerprint(cfg.legacy_key()) == "6728c54e48f1ef87"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from ntulm.synthetic import write_corpus

    return write_corpus(tmp_path_factory.mktemp("c") / "posts.jsonl", n_posts=200, seed=3)


def _pipeline(corpus, out, *overrides) -> Pipeline:
    cfg = PipelineConfig.from_sources(
        None, [f"posts=[{corpus}]", "eval.tasks=[{type: hashtag}]", *overrides]
    )
    p = Pipeline(cfg, out, progress=False)
    p.read_corpus().close()
    return p


def test_the_pipeline_reuses_a_graph_across_engine_settings_and_versions(corpus, tmp_path):
    out = tmp_path / "run"
    first = _pipeline(corpus, out)
    fp = first.graph([])
    again = _pipeline(corpus, out, "graph.read_workers=1", "graph.threads=1", "graph.batch_size=9")
    assert again.graph([]) == fp and again.reused == ["posts", "graph"]
    other = _pipeline(corpus, out, "graph.min_user_hashtags=2")
    assert other.graph([]) != fp and "graph" in other.ran
    # a graph made by the version before the read section, from the same inputs: reused, and its
    # fingerprint goes on downstream (so its NTU embeddings and models are reused too)
    old = fingerprint([other.cfg.graph.legacy_key(), other.cfg.posts, fingerprint([])])
    mark_run(out / "graph", "graph", old)
    later = _pipeline(corpus, out, "graph.min_user_hashtags=2", "graph.engine=duckdb")
    assert later.graph([]) == old and "graph" in later.reused
