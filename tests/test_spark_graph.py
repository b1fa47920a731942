"""The graph on Spark (``engine=spark``, ``local[2]``) equals the DuckDB graph, file for file.

Marked ``spark``: CI runs them (``.ci/run``); a developer's default ``pytest`` leaves them out
(``pytest -m spark`` runs them). One Spark session serves every test (the ``spark`` fixture in
conftest.py); the tests skip, naming the reason, where PySpark or Java 17+ is missing."""

import json

import pyarrow.parquet as pq
import pytest

from ntulm.errors import InputError
from ntulm.graph import GraphConfig, build_graph, build_graph_from_table
from ntulm.graph.build import edge_exclusion_lines, read_posts_table
from ntulm.posts.formats import parse_jsonl
from ntulm.synthetic import generate_posts, write_corpus

pytestmark = pytest.mark.spark

SPARK = {"engine": "spark", "spark_master": "local[2]"}
ARTIFACT = ("edges.parquet", "nodes_user.parquet", "nodes_hashtag.parquet", "relations.json")
# stats.json keys that describe the run, not the graph
RUN_KEYS = {"seconds", "peak_rss_mb", "engine", "spark_master"}


def assert_same_graph(a, b):
    for name in ARTIFACT:
        if name.endswith(".parquet"):
            ta, tb = pq.read_table(a / name), pq.read_table(b / name)
            assert ta.schema == tb.schema, name
            assert ta.num_rows > 0 and ta.equals(tb), name
        else:
            assert (a / name).read_text() == (b / name).read_text()
    sa = json.loads((a / "stats.json").read_text())
    sb = json.loads((b / "stats.json").read_text())
    assert {k: v for k, v in sa.items() if k not in RUN_KEYS} == {
        k: v for k, v in sb.items() if k not in RUN_KEYS
    }
    assert (a / "DONE.json").exists() and (b / "DONE.json").exists()


def test_spark_reads_files_with_our_readers_and_builds_the_duckdb_graph(spark, tmp_path):
    """Two input files read in Spark tasks (one with a record to quarantine), post and
    (user, hashtag) exclusions, the paper's filters and dedup weighting: the same artifact."""
    corpus = write_corpus(tmp_path / "a.jsonl", n_posts=200, users_per_community=5, seed=5)
    bad = tmp_path / "b.jsonl"  # a second file: one good post, one record to quarantine
    bad.write_text(
        '{"id": "x1", "text": "#nlproc rocks", "author": "zed", "favorited_by": ["amy"]}\n'
        "{not json\n"
    )
    posts = [parse_jsonl(r) for r in generate_posts(n_posts=200, users_per_community=5, seed=5)]
    (tmp_path / "ids.txt").write_text("".join(f"{p.id}\n" for p in posts[:30]))
    pairs = [(p.author.id, p.author.handle, p.hashtags[0]) for p in posts[30:50] if p.hashtags]
    (tmp_path / "pairs.jsonl").write_text(edge_exclusion_lines(pairs))
    settings = {
        "exclude_posts": str(tmp_path / "ids.txt"),
        "exclude_edges": str(tmp_path / "pairs.jsonl"),
        "min_hashtag_posts": 2,
        "min_user_hashtags": 2,
        "max_user_hashtags": 12,
        "weighting": "dedup",
    }
    inputs = [corpus, bad]
    duck = build_graph(inputs, tmp_path / "duck", GraphConfig(**settings), progress=False)
    stats = build_graph(
        inputs, tmp_path / "spark", GraphConfig(**settings, **SPARK), progress=False
    )
    assert stats["engine"] == "spark" and stats["posts"]["rejected"] == 1
    assert duck["posts_excluded"] == 30 and duck["engagements_excluded_by_edge"] > 0
    assert_same_graph(tmp_path / "duck", tmp_path / "spark")
    quarantined = [json.loads(x) for x in (tmp_path / "spark" / "rejected.jsonl").open()]
    assert [(q["file"].endswith("b.jsonl"), q["line"]) for q in quarantined] == [(True, 2)]


def test_spark_from_a_posts_table_equals_duckdb(spark, tmp_path):
    """The pipeline's path (``graph.engine=spark`` over its posts table), default settings."""
    corpus = write_corpus(tmp_path / "a.jsonl", n_posts=120, users_per_community=4, seed=3)
    table = tmp_path / "posts"
    read_posts_table([corpus], GraphConfig(), table, None, progress=False)
    build_graph_from_table(table, tmp_path / "duck", GraphConfig())
    build_graph_from_table(table, tmp_path / "spark", GraphConfig(**SPARK))
    assert_same_graph(tmp_path / "duck", tmp_path / "spark")


def test_spark_strict_mode_names_file_and_line(spark, tmp_path):
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"id": "x1", "text": "#a b", "author": "zed"}\n{not json\n')
    with pytest.raises(InputError, match=r"b\.jsonl.*2.*malformed JSON"):
        build_graph([bad], tmp_path / "g", GraphConfig(strict=True, **SPARK), progress=False)
