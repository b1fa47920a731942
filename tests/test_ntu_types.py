"""One registry of NTU types (``posts/ntus.py``): what each reads from a post, its graph node type,
its lookup; and no configuration can name a type that silently gives every post the mean vector."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ntulm.errors import ConfigError
from ntulm.lm.config import LMConfig
from ntulm.lm.data import ntu_type_vectors, ntu_vectors
from ntulm.pipeline import PipelineConfig
from ntulm.posts import NTU_TYPES, Post, UserRef
from ntulm.posts.ntus import EMBEDDED_NTU_TYPES, REGISTRY


def test_registry_reads_post_fields_and_names_graph_tables():
    fields = {f.name for f in dataclasses.fields(Post)}
    assert all(t.field in fields for t in REGISTRY.values())
    assert tuple(REGISTRY) == NTU_TYPES and set(NTU_TYPES) >= {"author", "hashtag", "mention"}
    # the node types are the graph's node tables (nodes_user / nodes_hashtag.parquet)
    assert {REGISTRY[t].node_type for t in EMBEDDED_NTU_TYPES} == {"user", "hashtag"}
    post = Post(
        id="1", text="x", author=UserRef(id="1"), mentions=[UserRef(handle="bob")], hashtags=["A"]
    )
    assert REGISTRY["author"].values(post) == [UserRef(id="1")]
    assert REGISTRY["mention"].values(post) == [UserRef(handle="bob")]
    assert REGISTRY["hashtag"].values(post) == ["A"]
    assert REGISTRY["author"].values(Post(id="2", text="y")) == []


def test_e_ntu_is_the_mean_of_the_posts_known_ntus(ntu):
    post = Post(
        id="1",
        text="x",
        author=UserRef(id="2"),
        mentions=[UserRef(handle="carol"), UserRef(handle="nobody")],
        hashtags=["#MAGA"],
    )
    u, h, mean = ntu.tables["user"], ntu.tables["hashtag"], ntu.mean
    e, known = ntu_vectors([post], ntu, ["author", "mention", "hashtag"])
    want = np.mean([u[1], u[2], mean, h[0]], axis=0, dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(e[0], want)
    assert known.tolist() == [True]
    e, _ = ntu_vectors([post], ntu, ["hashtag", "author"])  # the registry's order, not the list's
    want = np.mean([u[1], h[0]], axis=0, dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(e[0], want)
    per_type, _ = ntu_type_vectors([post], ntu, ["hashtag", "mention"])
    np.testing.assert_allclose(per_type[0], [h[0], u[2]])


@pytest.mark.parametrize("types", [["authr"], ["author", "hashtags"], ["url"]])
def test_an_unknown_type_is_an_error_not_the_mean_vector(ntu, types):
    post = Post(id="1", text="x", author=UserRef(id="1"), hashtags=["maga"])
    with pytest.raises(ValueError, match="unknown NTU type"):
        ntu_vectors([post], ntu, types)
    with pytest.raises(ConfigError, match="ntu_types"):
        LMConfig.build({"ntu_types": types})


def _pipeline(*variants: dict) -> PipelineConfig:
    return PipelineConfig.build(
        {
            "posts": ["x"],
            "eval": {"tasks": [{"type": "hashtag"}]},
            "variants": [
                {"name": "BERT", "use_ntu": False},
                {"name": "NTULM", "ntu_types": ["author"]},
                *variants,
            ],
        }
    )


@pytest.mark.parametrize(
    "variant, needle",
    [
        ({"name": "cat", "post_concat_of": "BERT", "ntu_types": ["authr"]}, "unknown NTU type"),
        ({"name": "cat", "post_concat_of": "BERT", "ntu_types": ["url"]}, "no NTU embedding"),
        ({"name": "cat", "post_concat_of": "BERT", "ntu_types": []}, "at least one NTU type"),
        ({"name": "ctl", "model_of": "NTULM", "ntu_types": ["authr"]}, "unknown NTU type"),
        ({"name": "ctl", "model_of": "NTULM", "ntu_types": ["hashtag"]}, "takes use_ntu"),
    ],
)
def test_variant_ntu_types_are_validated(variant, needle):
    with pytest.raises(ConfigError, match=needle):
        _pipeline(variant)


def test_model_of_variant_takes_its_models_types_validated():
    cfg = _pipeline({"name": "pooled", "model_of": "NTULM", "pooling": "mean+ntu"})
    v = cfg.variants[-1]
    assert v.ntu_types == ["author"] and v.use_ntu
    # the resolved config round-trips (config.json of a run)
    again = PipelineConfig.build(cfg.model_dump(mode="json"))
    assert again.variants[-1] == v


# ----------------------------------------------------- the graph stage asks the registry too
def _graph_corpus(lines):
    return lines(
        "g.jsonl",
        [
            {
                "id": "1",
                "text": "see https://x.org/a #news",
                "author": "ann",
                "reply_to_user": "zed",
            },
            {"id": "2", "text": "more https://x.org/a #news @bob", "author": "bob"},
        ],
    )


def _nodes(d, kind: str) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_table(d / f"nodes_{kind}.parquet").column("key").to_pylist())


def test_a_type_registered_once_reaches_the_graph_and_coverage(monkeypatch, lines, tmp_path):
    from ntulm.graph import build_graph, ntu_coverage
    from ntulm.posts.ntus import NTUType

    posts = _graph_corpus(lines)
    build_graph([posts], tmp_path / "before", progress=False)
    assert _nodes(tmp_path / "before", "hashtag") == {"news"}
    before = ntu_coverage([posts], tmp_path / "before", progress=False)
    # links as hashtag-like nodes, the user a post replies to as a user NTU: one row each
    monkeypatch.setitem(REGISTRY, "link", NTUType("link", "urls", "hashtag", "links"))
    monkeypatch.setitem(REGISTRY, "to", NTUType("to", "reply_to_user", "user", "replied-to user"))
    build_graph([posts], tmp_path / "after", progress=False)
    assert _nodes(tmp_path / "after", "hashtag") == {"news", "https://x.org/a"}
    after = ntu_coverage([posts], tmp_path / "after", progress=False)
    assert (before["hashtag"]["ntus"], after["hashtag"]["ntus"]) == (1, 2)
    assert (before["user"]["ntus"], after["user"]["ntus"]) == (2, 3)  # ann, bob (+ zed)


def test_a_node_type_the_graph_cannot_join_is_an_error(monkeypatch, lines, tmp_path):
    from ntulm.graph import build_graph
    from ntulm.posts.ntus import NTUType

    monkeypatch.setitem(REGISTRY, "link", NTUType("link", "urls", "url", "links"))
    with pytest.raises(ConfigError, match=r"NTU node type\(s\) \['url'\]"):
        build_graph([_graph_corpus(lines)], tmp_path / "g", progress=False)
