"""Negative controls: shuffled NTUs (a derangement within the split) and the table mean."""

import numpy as np
import pytest

from ntulm.errors import ConfigError
from ntulm.evaluate.controls import control_ntus, derangement
from ntulm.kge import NTUEmbeddings
from ntulm.lm.data import ntu_type_vectors, ntu_vectors
from ntulm.pipeline import PipelineConfig
from ntulm.pipeline.config import VariantSpec
from ntulm.posts import Post, UserRef


@pytest.fixture
def emb():
    rng = np.random.default_rng(0)
    return NTUEmbeddings(
        tables={"user": rng.normal(size=(6, 4)).astype(np.float32),
                "hashtag": rng.normal(size=(3, 4)).astype(np.float32)},
        keys={"user": [f"id:{i}" for i in range(6)], "hashtag": ["a", "b", "c"]},
        relations={}, user_handles=[None] * 6,
    )  # fmt: skip


def test_derangement_has_no_fixed_point_and_is_seeded():
    for n in range(2, 40):
        perm = derangement(n, np.random.default_rng(n))
        assert sorted(perm.tolist()) == list(range(n)) and not (perm == np.arange(n)).any()
    assert derangement(1, np.random.default_rng(0)).tolist() == [0]
    assert derangement(0, np.random.default_rng(0)).tolist() == []
    a, b = (derangement(30, np.random.default_rng(5)) for _ in range(2))
    assert np.array_equal(a, b) and not np.array_equal(a, derangement(30, np.random.default_rng(6)))


def test_controls_feed_other_posts_ntus_or_the_table_mean(emb):
    posts = [Post(id=str(i), text="x", author=UserRef(id=str(i)), hashtags=["abc"[i % 3]])
             for i in range(6)]  # fmt: skip
    own, _ = ntu_vectors(posts, emb, ["author", "hashtag"])  # distinct rows: distinct authors
    shuffled = control_ntus("shuffled", posts, emb, ["author", "hashtag"], seed=[13, 2])
    # the same multiset of rows, and no post keeps its own
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, own.tolist()))
    assert not np.isclose(shuffled, own).all(axis=1).any()
    same = control_ntus("shuffled", posts, emb, ["author", "hashtag"], seed=[13, 2])
    assert np.array_equal(shuffled, same)  # seeded
    mean = control_ntus("mean", posts, emb, ["author", "hashtag"])
    table_mean = np.concatenate([emb.tables["user"], emb.tables["hashtag"]]).mean(0)
    assert mean.shape == (6, 4) and np.allclose(mean, table_mean[None], atol=1e-6)
    with pytest.raises(ValueError, match="not one of"):
        control_ntus("zero", posts, emb, ["author"])


def test_per_type_controls_move_all_of_a_posts_type_rows_with_its_appended_row(emb):
    """A per-type model's control rows (N, K, D): the shuffled control gives each post the K rows
    of the same other post whose appended row it gets (one permutation), absent types included;
    the mean control gives every type the table mean."""
    posts = [Post(id=str(i), text="x", author=UserRef(id=str(i)),
                  hashtags=["abc"[i % 3]] if i % 2 else [])  # odd posts only: absent types
             for i in range(6)]  # fmt: skip
    types = ["author", "hashtag"]
    own, _ = ntu_type_vectors(posts, emb, types)  # (6, 2, 4), NaN where a post has no hashtag
    typed = control_ntus("shuffled", posts, emb, types, seed=[13, 1], per_type=True)
    flat = control_ntus("shuffled", posts, emb, ["author"], seed=[13, 1])
    assert typed.shape == (6, 2, 4)
    for i in range(6):
        (j,) = np.flatnonzero(np.isclose(own[:, 0], typed[i, 0]).all(axis=1))  # its source post
        assert j != i and np.array_equal(typed[i], own[j], equal_nan=True)
        assert np.allclose(flat[i], own[j, 0])  # the same other post as the appended row's
    mean = control_ntus("mean", posts, emb, types, per_type=True)
    assert mean.shape == (6, 2, 4) and np.allclose(mean, np.asarray(emb.mean)[None, None])


def test_control_variants_are_validated_and_paired_with_their_model():
    base = {"posts": ["x"], "eval": {"tasks": [{"type": "hashtag"}]}}
    ok = PipelineConfig.build({**base, "variants": [
        {"name": "BERT", "use_ntu": False},
        {"name": "N", "ntu_types": ["author"]},
        {"name": "N shuffled", "model_of": "N", "control": "shuffled"},
        {"name": "N mean", "model_of": "N", "control": "mean"},
        {"name": "N pooled", "model_of": "N", "pooling": "mean+ntu"},
        {"name": "N pooled mean", "model_of": "N", "pooling": "mean+ntu", "control": "mean"},
    ]})  # fmt: skip
    assert ok.controls() == {"N": ["N shuffled", "N mean"], "N pooled": ["N pooled mean"]}
    concat = PipelineConfig.build({**base, "variants": [
        {"name": "BERT", "use_ntu": False},
        {"name": "N", "ntu_types": ["author"]},
        {"name": "N + e", "post_concat_of": "N", "ntu_types": ["author"]},
        {"name": "N + e shuffled", "post_concat_of": "N", "ntu_types": ["author"], "control": "shuffled"},
        {"name": "BERT + e", "post_concat_of": "BERT", "ntu_types": ["author"]},
    ]})  # fmt: skip
    assert concat.controls() == {"N + e": ["N + e shuffled"]}
    typed = PipelineConfig.build({**base, "variants": [
        {"name": "BERT", "use_ntu": False},
        {"name": "T", "ntu_types": ["author", "hashtag"], "lm": {"ntu_tokens": "per_type"}},
        {"name": "T + e", "post_concat_of": "T", "ntu_types": ["author"]},
        {"name": "T + e mean", "post_concat_of": "T", "ntu_types": ["author"], "control": "mean"},
    ]})  # fmt: skip
    assert typed.controls() == {"T + e": ["T + e mean"]}
    split = PipelineConfig.build({**base, "variants": [
        {"name": "BERT", "use_ntu": False},
        {"name": "B + a|h", "post_concat_of": "BERT", "concat": "per_type"},
        {"name": "B + a+h", "post_concat_of": "BERT"},
        {"name": "N", "ntu_types": ["author"]},
        {"name": "N + a|h", "post_concat_of": "N", "concat": "per_type"},
        {"name": "N + a|h mean", "post_concat_of": "N", "concat": "per_type", "control": "mean"},
    ]})  # fmt: skip
    assert split.controls() == {"N + a|h": ["N + a|h mean"]}  # not the averaged one's
    assert "concat" not in split.variants[2].model_dump()  # the paper's: fingerprints unchanged
    with pytest.raises(ConfigError, match="post_concat_of"):
        PipelineConfig.build({**base, "variants": [{"name": "N", "concat": "per_type"}]})
    # concat_scale: a weight per appended block; a control matches its variant's weights
    weighted = PipelineConfig.build({**base, "variants": [
        {"name": "BERT", "use_ntu": False},
        {"name": "N", "ntu_types": ["author"]},
        {"name": "N + a|h", "post_concat_of": "N", "concat": "per_type"},
        {"name": "N + a|h/4", "post_concat_of": "N", "concat": "per_type",
         "concat_scale": {"hashtag": 0.25}},
        {"name": "N + a|h/4 mean", "post_concat_of": "N", "concat": "per_type",
         "concat_scale": {"hashtag": 0.25}, "control": "mean"},
    ]})  # fmt: skip
    assert weighted.controls() == {"N + a|h/4": ["N + a|h/4 mean"]}
    assert "concat_scale" not in weighted.variants[2].model_dump()  # fingerprints unchanged
    assert weighted.variants[2].block_scale(3) is None
    assert weighted.variants[3].block_scale(3).tolist() == [1, 1, 1, 0.25, 0.25, 0.25]
    for bad, match in (
        ({"name": "c", "concat_scale": {"author": 2.0}}, "post_concat_of"),
        ({"name": "c", "post_concat_of": "N", "concat": "per_type",
          "concat_scale": {"mention": 2.0}}, "not in ntu_types"),
        ({"name": "c", "post_concat_of": "N", "concat_scale": {"hashtag": 2.0}}, "per_type"),
        ({"name": "c", "post_concat_of": "N", "concat": "per_type",
          "concat_scale": {"hashtag": 0.0}}, "> 0"),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            PipelineConfig.build(
                {**base, "variants": [{"name": "N", "ntu_types": ["author"]}, bad]}
            )
    one = VariantSpec(
        name="c", post_concat_of="N", ntu_types=["author"], concat_scale={"author": 2}
    )
    assert one.block_scale(2).tolist() == [2, 2]  # one type: its one block, concat mean or not
    assert ok.variants[2].ntu_types == ["author"] and ok.protocol == "paper"
    for bad in (
        {"name": "c", "control": "mean"},
        {"name": "c", "model_of": "BERT", "control": "mean"},
        {"name": "c", "post_concat_of": "BERT", "control": "mean"},
    ):
        with pytest.raises(ConfigError, match="control needs model_of"):
            PipelineConfig.build({**base, "variants": [{"name": "BERT", "use_ntu": False}, bad]})
    with pytest.raises(ConfigError, match="protocol"):
        PipelineConfig.build({**base, "protocol": "temporal"})


@pytest.mark.parametrize("name", ["paper_cpu", "paper_cpu_seeds", "paper_gpu"])
def test_presets_carry_both_controls_and_state_the_user_filter(name):
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.yaml"
    cfg = PipelineConfig.from_sources(path, [])
    assert [len(c) for c in cfg.controls().values()] == [2]
    assert "min_user_hashtags" in path.read_text() and "max_user_hashtags" in path.read_text()
    assert all(s.exclusion == "strict" for s in cfg.eval.tasks if s.type == "hashtag")
