"""The graph stage on hand-made posts whose edges can be listed by hand."""

import json

import pyarrow.parquet as pq
import pytest

from ntulm.errors import ArtifactError, ConfigError, InputError
from ntulm.graph import GraphConfig, build_graph, ntu_coverage

POSTS = [
    # Table 1 of the paper: user1 authors, user2/user3 are mentioned, user4/user5 favorite.
    {
        "id": "t1",
        "text": "Our paper was accepted at @WNUT with @user2 @user3 #nlproc #socialmedia",
        "author": {"id": "1", "handle": "user1"},
        "favorited_by": ["user4", "user5"],
    },
    # user2 is given by handle only here; the id 2 comes from t3, so both are one user.
    {"id": "t2", "text": "#nlproc rocks", "author": "user2", "retweeted_by": [{"id": "4"}]},
    {"id": "t3", "text": "no tags here @user1", "author": {"id": "2", "handle": "user2"}},
    # A reply to t1 by user6: replied edges to t1's hashtags.
    {"id": "t4", "text": "congrats", "author": "user6", "reply_to_id": "t1"},
    # A retweet record: user7 retweeted t9 written by user8.
    {
        "id": "t5",
        "text": "RT #nlproc again",
        "author": "user7",
        "is_retweet": True,
        "retweet_of_id": "t9",
        "retweet_of_author": "user8",
        "hashtags": ["nlproc"],
    },
    # The same post twice (e.g. two crawls): counted once.
    {"id": "t2", "text": "#nlproc rocks", "author": "user2", "retweeted_by": [{"id": "4"}]},
]


@pytest.fixture
def corpus(lines):
    return lines("posts.jsonl", POSTS)


def edges_by_name(graph_dir):
    users = {
        r["node_id"]: r["key"] for r in pq.read_table(graph_dir / "nodes_user.parquet").to_pylist()
    }
    tags = {
        r["node_id"]: r["key"]
        for r in pq.read_table(graph_dir / "nodes_hashtag.parquet").to_pylist()
    }
    return {
        (users[e["lhs"]], e["rel"], tags[e["rhs"]]): e["weight"]
        for e in pq.read_table(graph_dir / "edges.parquet").to_pylist()
    }


def test_edges_relations_and_identity(corpus, tmp_path):
    stats = build_graph([corpus], tmp_path / "g", progress=False)
    edges = edges_by_name(tmp_path / "g")
    assert edges == {
        ("id:1", "authored", "nlproc"): 1,
        ("id:1", "authored", "socialmedia"): 1,
        ("@wnut", "co_mentioned", "nlproc"): 1,
        ("@wnut", "co_mentioned", "socialmedia"): 1,
        ("id:2", "co_mentioned", "nlproc"): 1,
        ("id:2", "co_mentioned", "socialmedia"): 1,
        ("@user3", "co_mentioned", "nlproc"): 1,
        ("@user3", "co_mentioned", "socialmedia"): 1,
        ("@user4", "favorited", "nlproc"): 1,
        ("@user4", "favorited", "socialmedia"): 1,
        ("@user5", "favorited", "nlproc"): 1,
        ("@user5", "favorited", "socialmedia"): 1,
        ("id:2", "authored", "nlproc"): 1,  # t2 by handle user2 -> id 2 (t2 appears twice: once)
        ("id:4", "retweeted", "nlproc"): 1,
        ("@user6", "replied", "nlproc"): 1,
        ("@user6", "replied", "socialmedia"): 1,
        ("@user7", "retweeted", "nlproc"): 1,
        ("@user8", "authored", "nlproc"): 1,
    }
    users = pq.read_table(tmp_path / "g" / "nodes_user.parquet").to_pylist()
    by_key = {u.pop("key"): u for u in users}
    assert by_key["id:2"] == {"node_id": 8, "user_id": "2", "handle": "user2", "posts": 2}
    assert by_key["@wnut"] == {"node_id": 6, "user_id": None, "handle": "wnut", "posts": 1}
    assert [u["node_id"] for u in by_key.values()] == list(range(len(users)))
    assert stats["nodes"] == {"user": 10, "hashtag": 2}
    assert stats["edges"] == 18 and sum(stats["edges_per_relation"].values()) == 18
    # t2's second copy: a duplicate id, counted and rejected (the first is kept)
    assert (stats["posts"]["read"], stats["posts"]["accepted"]) == (6, 5)
    assert stats["posts"]["duplicate_ids"] == 1
    saved = json.loads((tmp_path / "g" / "stats.json").read_text())
    assert saved["edges_per_relation"] == stats["edges_per_relation"]
    assert json.loads((tmp_path / "g" / "relations.json").read_text())[0] == {
        "name": "authored",
        "lhs": "user",
        "rhs": "hashtag",
    }
    assert (tmp_path / "g" / "DONE.json").exists() and not list((tmp_path / "g").glob(".work-*"))


def test_relation_choice_and_weights(lines, tmp_path):
    posts = [
        {"id": str(i), "text": f"post {i} #a", "author": "u", "favorited_by": ["v"]}
        for i in range(3)
    ]
    path = lines("p.jsonl", posts)
    build_graph([path], tmp_path / "count", GraphConfig(relations=["authored"]), progress=False)
    assert edges_by_name(tmp_path / "count") == {("@u", "authored", "a"): 3}
    build_graph([path], tmp_path / "dedup", GraphConfig(weighting="dedup"), progress=False)
    assert edges_by_name(tmp_path / "dedup") == {
        ("@u", "authored", "a"): 1,
        ("@v", "favorited", "a"): 1,
    }


def test_filters(lines, tmp_path):
    posts = []
    # u1 uses 5 hashtags, u2 uses 2, u3 uses 1; hashtag t0 is used by everyone, t4 once.
    for u, n in (("u1", 5), ("u2", 2), ("u3", 1)):
        for k in range(n):
            posts.append({"id": f"{u}-{k}", "text": f"#t{k}", "author": u})
    path = lines("p.jsonl", posts)
    cfg = GraphConfig(min_user_hashtags=2, max_user_hashtags=4, min_hashtag_posts=2)
    stats = build_graph([path], tmp_path / "g", cfg, progress=False)
    # hashtags used in >=2 posts: t0, t1; then users with 2..4 unique of those: u1 (2), u2 (2).
    assert set(edges_by_name(tmp_path / "g")) == {
        ("@u1", "authored", "t0"),
        ("@u1", "authored", "t1"),
        ("@u2", "authored", "t0"),
        ("@u2", "authored", "t1"),
    }
    assert stats["before_filters"] == {"users": 3, "hashtags": 5, "engagements": 8}
    assert stats["degree"]["user_unique_hashtags"]["max"] == 2


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="relations.0: Input should be 'authored'"):
        GraphConfig.build({"relations": ["liked"]})
    with pytest.raises(ConfigError, match="max_user_hashtags .5. < min_user_hashtags .10."):
        GraphConfig.build({"min_user_hashtags": 10, "max_user_hashtags": 5})
    with pytest.raises(ConfigError, match="colour: unknown key"):
        GraphConfig.from_sources(overrides=["colour=red"])
    cfg = GraphConfig.from_sources(
        overrides=["relations=[authored, favorited]", "min_hashtag_posts=3"]
    )
    assert cfg.relations == ["authored", "favorited"] and cfg.min_hashtag_posts == 3
    assert (
        GraphConfig.paper().min_user_hashtags == 10 and GraphConfig.paper().max_user_hashtags == 100
    )


def test_coverage_table5(corpus, lines, tmp_path):
    build_graph([corpus], tmp_path / "g", progress=False)
    other = lines(
        "other.jsonl",
        [
            {"id": "a", "text": "#nlproc and #unseen", "author": "user2"},  # author known by handle
            {"id": "b", "text": "#unseen only", "author": "stranger"},
            {"id": "c", "text": "nothing", "author": {"id": "1"}},
            {"id": "d", "text": "nothing", "author": None},
        ],
    )
    cov = ntu_coverage([other], tmp_path / "g", progress=False)
    assert cov["posts"] == 4
    assert cov["hashtag"] == {
        "ntus": 2,
        "pct_posts_with_ntu": 50.0,
        "pct_posts_with_multiple": 25.0,
        "pct_posts_with_ntu_in_graph": 25.0,
        "pct_ntu_posts_in_graph": 50.0,
    }
    assert (
        cov["user"]["pct_posts_with_ntu"] == 75.0
        and cov["user"]["pct_posts_with_ntu_in_graph"] == 50.0
    )


def test_parallel_reading_equals_sequential(lines, tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(3):
        recs = [
            {"id": f"{i}-{k}", "text": f"#t{k % 3} by u{k % 4}", "author": f"u{k % 4}"}
            for k in range(20)
        ]
        recs.insert(5, "{bad json")
        lines(f"d/f{i}.jsonl", recs)
    s1 = build_graph(
        [tmp_path / "d"], tmp_path / "seq", GraphConfig(read_workers=1), progress=False
    )
    s2 = build_graph(
        [tmp_path / "d"], tmp_path / "par", GraphConfig(read_workers=2), progress=False
    )
    assert edges_by_name(tmp_path / "seq") == edges_by_name(tmp_path / "par")
    assert s1["posts"] == s2["posts"] and s2["posts"]["rejected"] == 3 and s2["posts"]["read"] == 63
    for d in ("seq", "par"):
        rejected = [
            json.loads(x) for x in (tmp_path / d / "rejected.jsonl").read_text().splitlines()
        ]
        assert [(r["file"].split("/")[-1], r["line"]) for r in rejected] == [
            ("f0.jsonl", 6),
            ("f1.jsonl", 6),
            ("f2.jsonl", 6),
        ]
    with pytest.raises(InputError, match=r"f0.jsonl:6: malformed JSON"):
        build_graph(
            [tmp_path / "d"],
            tmp_path / "strict",
            GraphConfig(read_workers=2, strict=True),
            progress=False,
        )


def test_excluded_posts_add_no_edges(corpus, tmp_path):
    ids = tmp_path / "exclude.txt"
    ids.write_text("t1\nnot-a-post\n")
    stats = build_graph(
        [corpus], tmp_path / "g", GraphConfig(exclude_posts=str(ids)), progress=False
    )
    edges = edges_by_name(tmp_path / "g")
    # t1 gave all socialmedia edges and user1's, WNUT's, user3/4/5's and the reply's (its parent is gone).
    assert edges == {
        ("id:2", "authored", "nlproc"): 1,
        ("id:4", "retweeted", "nlproc"): 1,
        ("@user7", "retweeted", "nlproc"): 1,
        ("@user8", "authored", "nlproc"): 1,
    }
    assert stats["posts_excluded"] == 1 and stats["exclude_list_ids"] == 2
    with pytest.raises(ArtifactError, match="exclude_posts file not found"):
        build_graph(
            [corpus],
            tmp_path / "g2",
            GraphConfig(exclude_posts=str(tmp_path / "nope")),
            progress=False,
        )


def test_excluded_edges_remove_a_user_hashtag_pair_in_every_relation(corpus, tmp_path):
    from ntulm.graph.build import edge_exclusion_lines

    pairs = tmp_path / "pairs.jsonl"
    # user2 by handle only: resolved to id:2 as the engagements are
    pairs.write_text(edge_exclusion_lines([(None, "user2", "nlproc"), ("1", None, "socialmedia")]))
    stats = build_graph(
        [corpus], tmp_path / "g", GraphConfig(exclude_edges=str(pairs)), progress=False
    )
    edges = edges_by_name(tmp_path / "g")
    assert not {k for k in edges if k[0] == "id:2" and k[2] == "nlproc"}  # authored, co_mentioned
    assert ("id:1", "authored", "socialmedia") not in edges
    assert ("id:1", "authored", "nlproc") in edges and (
        "id:2",
        "co_mentioned",
        "socialmedia",
    ) in edges
    assert stats["exclude_edge_pairs"] == 2 and stats["engagements_excluded_by_edge"] == 3
    pairs.write_text('{"user": {"id": "1"}, "hashtag": "x"}\n{"user": {}, "hashtag": "x"}\n')
    with pytest.raises(ArtifactError, match="line 2: bad excluded edge"):
        build_graph(
            [corpus], tmp_path / "g2", GraphConfig(exclude_edges=str(pairs)), progress=False
        )


def test_strict_hashtag_task_leaves_no_test_author_edge_to_the_removed_hashtag(tmp_path):
    from ntulm.evaluate import hashtag_task
    from ntulm.graph.build import edge_exclusion_lines
    from ntulm.posts.formats import parse_jsonl
    from ntulm.synthetic import generate_posts, write_corpus

    path = write_corpus(tmp_path / "corpus.jsonl", n_posts=400, users_per_community=6, seed=4)
    posts = [parse_jsonl(r) for r in generate_posts(n_posts=400, users_per_community=6, seed=4)]
    graphs = {}
    for exclusion in ("posts", "strict"):
        task = hashtag_task(posts, top_k=5, per_class=8, seed=1, exclusion=exclusion)
        ids, pairs = tmp_path / f"{exclusion}_ids.txt", tmp_path / f"{exclusion}_pairs.jsonl"
        ids.write_text("".join(f"{i}\n" for i in task.exclude_from_graph))
        pairs.write_text(edge_exclusion_lines(task.exclude_edges))
        cfg = GraphConfig(
            exclude_posts=str(ids), exclude_edges=str(pairs) if task.exclude_edges else None
        )
        build_graph([path], tmp_path / exclusion, cfg, progress=False)
        graphs[exclusion] = edges_by_name(tmp_path / exclusion)
        assert task.info["graph_exclusion"] == exclusion
    test_pairs = {(p.author.key, p.labels["hashtag"]) for p in task.test}
    assert task.exclude_edges and len(task.exclude_edges) == len(test_pairs)
    leaks = {(u, h) for u, _, h in graphs["posts"]} & test_pairs
    assert leaks  # with posts excluded only, test authors keep edges to their removed hashtag
    assert not {(u, h) for u, _, h in graphs["strict"]} & test_pairs
