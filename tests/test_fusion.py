"""Fusion designs beyond the paper (lm/fusion.py, lm/social.py): per-type NTU tokens, NTU
dropout, the social contrastive objective and its pair mining, the learned pooling gate; save/load
and resume with them; and that the defaults leave the paper's model as it was."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


from ntulm.errors import ConfigError  # noqa: E402
from ntulm.kge import NTUEmbeddings  # noqa: E402
from ntulm.lm import NTULM, LMConfig, TextNormConfig, encode, finetune  # noqa: E402
from ntulm.lm.data import derangement, ntu_type_vectors, ntu_vectors, pad, tokenize  # noqa: E402
from ntulm.lm.fusion import GatePooling, TypedNTUTokens, drop_ntus  # noqa: E402
from ntulm.lm.model import FUSION, LM_CONFIG, LM_META  # noqa: E402
from ntulm.lm.social import (  # noqa: E402
    mine_pairs,
    nt_xent,
    pick_partners,
    text_embeddings,
    topk_exact,
    topk_faiss,
)
from ntulm.pipeline.config import PipelineConfig, VariantSpec  # noqa: E402
from ntulm.posts import Post, UserRef  # noqa: E402

TEXTS = ["the cat sat on the mat", "vote today #maga", "breaking news tonight", "hello"]


@pytest.fixture(scope="module")
def ntu() -> NTUEmbeddings:
    rng = np.random.default_rng(0)
    return NTUEmbeddings(
        tables={
            "user": rng.normal(size=(4, 8)).astype(np.float32),
            "hashtag": rng.normal(size=(2, 8)).astype(np.float32),
        },
        keys={"user": ["id:0", "id:1", "id:2", "id:3"], "hashtag": ["maga", "news"]},
        relations={},
        user_handles=[None] * 4,
        config={},
    )


def _posts(n: int = 40) -> list[Post]:
    """Authors 0..4 (4 unknown to the embeddings); #maga on every third post."""
    return [
        Post(
            id=str(i),
            text=TEXTS[i % len(TEXTS)] + f" {i}",
            author=UserRef(id=str(i % 5)),
            hashtags=["maga"] if i % 3 == 0 else [],
        )
        for i in range(n)
    ]


def _cfg(backbone: str, **kw) -> LMConfig:
    base = {"backbone": backbone, "batch_size": 8, "max_epochs": 1, "progress": False}
    return LMConfig.build({**base, "max_length": 16, **kw})


def _model(backbone: str, ntu: NTUEmbeddings, **kw) -> NTULM:
    torch.manual_seed(0)
    model, _ = NTULM.from_backbone(_cfg(backbone, **kw), ntu.dim)
    model.ntu = ntu
    return model.eval()


# ---------------------------------------------------------------------------- config
def test_defaults_are_the_paper_and_bad_combinations_name_the_field():
    cfg = LMConfig()
    assert (cfg.ntu_tokens, cfg.ntu_dropout, cfg.social_weight, cfg.pooling_gate) == (
        "mean",
        0.0,
        0.0,
        False,
    )
    with pytest.raises(ConfigError, match="pooling_gate"):
        LMConfig.build({"pooling_gate": True})
    with pytest.raises(ConfigError, match="ntu_dropout"):
        LMConfig.build({"ntu_dropout": 1.5})
    with pytest.raises(ConfigError, match="ntu_tokens"):
        LMConfig.build({"use_ntu": False, "ntu_tokens": "per_type"})


# ---------------------------------------------------------------------------- per-type tokens
def test_type_vectors_mean_known_ntus_and_nan_where_absent(ntu):
    posts = [
        Post(id="a", text="x", author=UserRef(id="1"), hashtags=["maga", "nope"]),
        Post(id="b", text="x", author=UserRef(id="9"), hashtags=["MAGA", "news"]),
        Post(id="c", text="x", author=UserRef(id="9")),
    ]
    e, overlap = ntu_type_vectors(posts, ntu, ["author", "hashtag"])
    assert e.shape == (3, 2, 8) and overlap.tolist() == [True, True, False]
    np.testing.assert_allclose(e[0, 0], ntu.tables["user"][1])
    np.testing.assert_allclose(e[0, 1], ntu.tables["hashtag"][0])  # the unknown tag is not averaged
    assert np.isnan(e[1, 0]).all() and np.isnan(e[2]).all()
    np.testing.assert_allclose(e[1, 1], ntu.tables["hashtag"].mean(0), rtol=1e-6)


def test_ntu_vectors_equal_the_per_post_means_bit_for_bit(ntu):
    """ntu_vectors / ntu_type_vectors take all posts' means at once; they equal the per-post
    float64 np.mean of each post's vectors (the paper's e_ntu) bit for bit: unknown NTUs (the
    table mean in e_ntu, left out per type), absent types, repeated NTUs, mentions, an empty list."""
    from ntulm.lm.data import post_ntu_rows

    rng = np.random.default_rng(3)
    users = [UserRef(id=str(i)) for i in range(12)] + [UserRef(handle="nobody")]
    tags = ["maga", "news", "MAGA", "nope", "x1", "x2"]
    posts = [
        Post(id=str(k), text="t", author=users[rng.integers(len(users))] if k % 5 else None,
             hashtags=list(rng.choice(tags, size=rng.integers(0, 4))),
             mentions=[users[j] for j in rng.integers(0, len(users), size=rng.integers(0, 3))])
        for k in range(60)
    ]  # fmt: skip
    mean = np.asarray(ntu.mean, dtype=np.float32)
    for types in (["author", "hashtag"], ["author", "mention", "hashtag"], ["hashtag"]):
        for unknown in ((), ("author",)):
            got, known = ntu_vectors(posts, ntu, types, unknown)
            typed, typed_known = ntu_type_vectors(posts, ntu, types, unknown)
            for k, post in enumerate(posts):
                rows = post_ntu_rows(post, ntu, types, unknown)
                parts = [ntu.tables[t][i] if i is not None else mean for t, i in rows]
                want = np.mean(parts, axis=0, dtype=np.float64) if parts else mean
                assert got[k].tobytes() == want.astype(np.float32).tobytes()
                assert known[k] == any(i is not None for _, i in rows)
                for j, t in enumerate(types):
                    own = [ntu.tables[tb][i] for tb, i in post_ntu_rows(post, ntu, [t], unknown)
                           if i is not None]  # fmt: skip
                    if own:
                        want = np.mean(own, axis=0, dtype=np.float64).astype(np.float32)
                        assert typed[k, j].tobytes() == want.tobytes()
                    else:
                        assert np.isnan(typed[k, j]).all()
            assert typed_known.tolist() == (~np.isnan(typed).all(axis=(1, 2))).tolist()
            assert 0 < known.sum() < len(posts)
    assert ntu_vectors([], ntu, ["author"])[0].shape == (0, 8)
    assert ntu_type_vectors([], ntu, ["author", "hashtag"])[0].shape == (0, 2, 8)


def test_typed_tokens_project_per_type_and_use_unknown_or_drop():
    torch.manual_seed(0)
    mod = TypedNTUTokens(2, 3, 4, absent="unknown")
    e = torch.tensor([[[1.0, 2.0, 3.0], [math.nan] * 3]])  # type 0 present, type 1 absent
    s, mask = mod(e)
    want0 = mod.weight[0] @ e[0, 0] + mod.bias[0] + mod.type_embedding[0]
    torch.testing.assert_close(s[0, 0], want0)
    torch.testing.assert_close(s[0, 1], mod.unknown[1] + mod.type_embedding[1])
    assert mask.tolist() == [[1, 1]]
    s.sum().backward()  # absent rows must not put NaN into the gradients
    assert torch.isfinite(mod.weight.grad).all() and mod.weight.grad[1].abs().sum() == 0
    assert mod.unknown.grad[1].abs().sum() > 0 and mod.unknown.grad[0].abs().sum() == 0
    mod.absent = "drop"
    assert mod(e)[1].tolist() == [[1, 0]]


def test_per_type_model_injects_k_tokens_after_the_words(backbone, ntu, tokenizer):
    model = _model(backbone, ntu, ntu_tokens="per_type", ntu_types=["author", "hashtag"])
    assert model.projection is None and model.typed is not None and model.use_ntu
    ids, mask = pad(tokenize(TEXTS[:3], tokenizer, 16, TextNormConfig()), tokenizer.pad_token_id)
    e = torch.from_numpy(ntu_type_vectors(_posts(3), ntu, ["author", "hashtag"])[0])
    hidden, full = model.hidden_states(ids, mask, e)
    B, T = ids.shape
    assert (
        hidden.shape == (B, T + 2, 32) and (full[:, T:] == 1).all() and torch.isfinite(hidden).all()
    )


def test_per_type_model_default_appends_the_author_vector(backbone, ntu):
    """The recommended embedding of a per-type model is [mean ; e_author] as for the others
    (its 3-seed test, benchmarks/results/fusion/final_pertype); given (N, K, D) rows, nothing is
    appended (they are the model's input, not one vector to append)."""
    from ntulm.lm.encode import output_dim

    model = _model(backbone, ntu, ntu_tokens="per_type", ntu_types=["author", "hashtag"])
    posts = _posts(6)
    default, plain = encode(model, posts), encode(model, posts, concat_ntu=False)
    assert default.shape == (6, 32 + ntu.dim) and output_dim(model) == 32 + ntu.dim
    np.testing.assert_array_equal(default[:, :32], plain)
    np.testing.assert_allclose(default[:, 32:], ntu_vectors(posts, ntu, ["author"])[0])
    rows = ntu_type_vectors(posts, ntu, ["author", "hashtag"])[0]
    np.testing.assert_array_equal(encode(model, posts, ntus=rows), plain)


def test_dropped_type_is_invisible_to_the_words(backbone, ntu, tokenizer):
    """absent=drop: a post without hashtags gets no hashtag token; whatever the unknown vector
    says, the word states do not change (masked out of attention)."""
    model = _model(
        backbone, ntu, ntu_tokens="per_type", ntu_types=["author", "hashtag"], ntu_absent="drop"
    )
    post = [Post(id="p", text="hello there", author=UserRef(id="1"))]
    ids, mask = pad(tokenize(["hello there"], tokenizer, 16, TextNormConfig()), 0)
    e = torch.from_numpy(ntu_type_vectors(post, ntu, ["author", "hashtag"])[0])
    with torch.no_grad():
        h1, full = model.hidden_states(ids, mask, e)
        model.typed.unknown.add_(torch.randn_like(model.typed.unknown) * 5)
        h2, _ = model.hidden_states(ids, mask, e)
    T = ids.shape[1]
    assert full[0, T:].tolist() == [1, 0]
    torch.testing.assert_close(h1[:, : T + 1], h2[:, : T + 1])
    # With absent=unknown the unknown vector is attended and does change them.
    model.typed.absent = "unknown"
    with torch.no_grad():
        h3, _ = model.hidden_states(ids, mask, e)
        model.typed.unknown.zero_()
        h4, _ = model.hidden_states(ids, mask, e)
    assert not torch.allclose(h3[:, :T], h4[:, :T])


@pytest.mark.parametrize("absent", ["unknown", "drop"])
def test_per_type_encode_is_padding_invariant_and_trains_each_projection(
    backbone, ntu, tokenizer, absent
):
    kw = {"ntu_tokens": "per_type", "ntu_types": ["author", "hashtag"], "ntu_absent": absent}
    model = _model(backbone, ntu, **kw)
    posts = _posts(7)
    for pooling in ("mean", "mean+ntu"):
        np.testing.assert_allclose(
            encode(model, posts, batch_size=1, pooling=pooling),
            encode(model, posts, batch_size=7, pooling=pooling),
            rtol=1e-4,
            atol=1e-5,
        )
    model.train()
    ids, mask = pad(tokenize([p.text for p in posts], tokenizer, 16, TextNormConfig()), 0)
    labels = torch.where(mask.bool(), ids, -100)
    e = torch.from_numpy(ntu_type_vectors(posts, ntu, ["author", "hashtag"])[0])
    loss, _ = model.mlm_loss(ids, mask, labels, e)
    loss.backward()
    grad = model.typed.weight.grad
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()


# ---------------------------------------------------------------------------- NTU dropout
def test_ntu_dropout_rate_is_realised_and_seeded(ntu):
    mean = ntu.mean
    e = np.ones((20_000, 8), dtype=np.float32)
    out = drop_ntus(e, 0.3, np.random.default_rng(1), mean)
    hidden = (out == mean).all(1)
    assert abs(hidden.mean() - 0.3) < 0.015 and (out[~hidden] == 1).all()
    assert (e == 1).all()  # the input is left alone
    np.testing.assert_array_equal(out, drop_ntus(e, 0.3, np.random.default_rng(1), mean))
    typed = np.ones((10_000, 3, 8), dtype=np.float32)
    gone = np.isnan(drop_ntus(typed, 0.2, np.random.default_rng(2))).all(2)  # (N, K), per type
    assert abs(gone.mean() - 0.2) < 0.015 and abs(gone.all(1).mean() - 0.008) < 0.004
    np.testing.assert_array_equal(drop_ntus(e, 0.0, np.random.default_rng(1), mean), e)


# ---------------------------------------------------------------------------- NTU warm-up, NTU lr
@pytest.mark.parametrize("ntu_tokens", ["mean", "per_type"])
def test_ntu_warmup_trains_only_the_ntu_path_and_head_through_the_frozen_encoder(
    backbone, ntu, tokenizer, ntu_tokens
):
    from ntulm.lm.train import _head_warmup

    types = ["author", "hashtag"]
    posts = _posts(24)
    tokens = tokenize([p.text for p in posts], tokenizer, 16, TextNormConfig())
    vectors = ntu_type_vectors if ntu_tokens == "per_type" else ntu_vectors
    e = vectors(posts, ntu, types)[0]
    changed = {}
    for warm in (False, True):
        cfg = _cfg(backbone, ntu_tokens=ntu_tokens, ntu_types=types, ntu_warmup=warm, seed=3)
        model = _model(backbone, ntu, ntu_tokens=ntu_tokens, ntu_types=types).train()
        ntu_ids = {id(p) for p in model.ntu_parameters()}
        assert ntu_ids and all(
            id(p) in ntu_ids for p in (model.projection or model.typed).parameters()
        )
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        _head_warmup(model, cfg, tokens, e, torch.device("cpu"), 3)
        changed[warm] = {
            n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])
        }
        encoder = {n for n, _ in model.base.named_parameters()}
        assert not any(n.split(".", 2)[-1] in encoder for n in changed[warm] if "embeddings" in n)
        assert all(p.requires_grad for p in model.parameters())  # unfrozen again
        for n, p in model.named_parameters():
            if n in changed[warm]:
                assert not n.startswith("mlm." + model.base.base_model_prefix), n  # encoder frozen
                assert id(p) in ntu_ids or n.startswith(f"mlm.{model.head_name}."), n
    weights = "typed.weight" if ntu_tokens == "per_type" else "projection.weight"
    assert weights not in changed[False] and weights in changed[True]
    assert changed[False] and changed[False] < changed[True]  # the head trains either way


def test_frozen_weights_are_trainable_again_after_an_error():
    from ntulm.lm.train import _frozen

    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(RuntimeError, match="boom"), _frozen([p]):
        assert not p.requires_grad
        raise RuntimeError("boom")
    assert p.requires_grad


def test_ntu_lr_puts_the_ntu_path_in_groups_of_its_own(backbone, ntu, caplog, tmp_path):
    from ntulm.lm.train import _optimizer

    kw = {"ntu_tokens": "per_type", "ntu_types": ["author", "hashtag"]}
    model = _model(backbone, ntu, **kw)
    plain = _optimizer(model, _cfg(backbone, **kw))
    assert [(g["lr"], g["weight_decay"]) for g in plain.param_groups] == [
        (5e-5, 0.01),
        (5e-5, 0.0),
    ]  # as before the option existed, so old checkpoints resume
    opt = _optimizer(model, _cfg(backbone, ntu_lr=1e-3, **kw))
    ntu_ids = {id(p) for p in model.ntu_parameters()}
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    for g in opt.param_groups:
        is_ntu = {id(p) in ntu_ids for p in g["params"]}
        assert len(is_ntu) == 1 and g["lr"] == (1e-3 if is_ntu.pop() else 5e-5)
    assert sum(len(g["params"]) for g in opt.param_groups if g["lr"] == 1e-3) == len(ntu_ids)
    with pytest.raises(ConfigError, match="ntu_warmup"):
        LMConfig.build({"use_ntu": False, "ntu_warmup": True})
    with pytest.raises(ConfigError, match="ntu_lr"):
        LMConfig.build({"ntu_lr": 0})
    # This backbone has an MLM head, so no warm-up runs: said, not silently ignored.
    with caplog.at_level("WARNING", logger="ntulm.lm.train"):
        finetune(_posts(16), _cfg(backbone, ntu_warmup=True, ntu_lr=1e-3), tmp_path / "m", ntu=ntu)
    assert "ntu_warmup: no head warm-up runs" in caplog.text


# ---------------------------------------------------------------------------- fine-tune control
@pytest.mark.parametrize("ntu_tokens", ["mean", "per_type"])
def test_ntu_shuffle_gives_every_post_another_posts_ntu_input(ntu, ntu_tokens):
    from ntulm.lm.data import finetune_ntu_inputs, ntu_inputs

    posts = _posts(30)
    kw = {"ntu_tokens": ntu_tokens, "ntu_types": ["author", "hashtag"], "seed": 5}
    own, own_flags = ntu_inputs(posts, ntu, LMConfig.build(kw))
    plain, _ = finetune_ntu_inputs(posts, ntu, LMConfig.build(kw))
    np.testing.assert_array_equal(plain, own)  # off by default: the posts' own rows
    e, flags = finetune_ntu_inputs(posts, ntu, LMConfig.build({**kw, "ntu_shuffle": True}))
    # a derangement of the rows, seeded by lm.seed, the overlap flags carried with their rows
    perm = derangement(len(posts), np.random.default_rng(5))
    assert (perm != np.arange(len(posts))).all()
    np.testing.assert_array_equal(e, own[perm])
    np.testing.assert_array_equal(flags, own_flags[perm])
    # posts 0 and 1 differ in author and hashtag: the pairing of post and NTUs is broken
    assert not np.array_equal(e, own, equal_nan=True)
    again, _ = finetune_ntu_inputs(posts, ntu, LMConfig.build({**kw, "ntu_shuffle": True}))
    np.testing.assert_array_equal(again, e)


def test_ntu_shuffle_needs_ntus_and_no_social_pairs_and_changes_training(backbone, ntu, tmp_path):
    with pytest.raises(ConfigError, match="ntu_shuffle"):
        LMConfig.build({"use_ntu": False, "ntu_shuffle": True})
    with pytest.raises(ConfigError, match="ntu_shuffle"):
        LMConfig.build({"ntu_shuffle": True, "social_weight": 1.0})
    assert LMConfig.build({"ntu_shuffle": True}).model_dump(mode="json")["ntu_shuffle"] is True
    plain = finetune(_posts(), _cfg(backbone), tmp_path / "a", ntu=ntu)
    shuffled = finetune(_posts(), _cfg(backbone, ntu_shuffle=True), tmp_path / "b", ntu=ntu)
    assert shuffled.eval_bits != plain.eval_bits
    assert NTULM.load(tmp_path / "b").cfg.ntu_shuffle


# ---------------------------------------------------------------------------- social objective
def test_nt_xent_against_a_hand_computed_value():
    """3 pairs in 2-D, tau = 0.5. For a_0 = (1, 0): cosines to a_1, a_2, b_0, b_1, b_2 are
    0, 1/sqrt2, 1, 0, -1/sqrt2, so its term is -log(e^2 / (e^0 + e^1.414 + e^2 + e^0 + e^-1.414));
    the mean of the six such terms is 1.35198760..."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 1.0]])
    term0 = -math.log(math.e**2 / (2 + math.e ** (2**0.5) + math.e**2 + math.e ** -(2**0.5)))
    assert term0 == pytest.approx(0.62071, abs=1e-5)  # 2 + 4.113 + 7.389 + 0.243 = 13.745
    # All six terms with plain floats: anchor i's partner is (i + 3) mod 6.
    z = [[x / math.hypot(*v) for x in v] for v in a.tolist() + b.tolist()]
    terms = []
    for i in range(6):
        cos = [z[i][0] * z[j][0] + z[i][1] * z[j][1] for j in range(6)]
        den = sum(math.exp(c / 0.5) for j, c in enumerate(cos) if j != i)
        terms.append(-math.log(math.exp(cos[(i + 3) % 6] / 0.5) / den))
    assert terms[0] == pytest.approx(term0)
    assert sum(terms) / 6 == pytest.approx(1.3519876904157837, rel=1e-9)
    assert float(nt_xent(a, b, 0.5)) == pytest.approx(1.3519876904157837, rel=1e-6)
    # Perfectly aligned, well-separated pairs give a lower loss than swapped ones.
    assert nt_xent(a, a, 0.1) < nt_xent(a, a[[1, 2, 0]], 0.1)


def _planted() -> tuple[NTUEmbeddings, list[Post]]:
    """Authors 0,0,1,2,3,? with user vectors: 0 ~ 1 (close), 2 ~ 3 (close), far from each other;
    the last post's author is unknown."""
    users = np.array(
        [[1.0, 0, 0, 0], [0.95, 0.05, 0, 0], [0, 0, 1.0, 0], [0, 0, 0.9, 0.1]], dtype=np.float32
    )
    emb = NTUEmbeddings(
        tables={"user": users, "hashtag": np.zeros((0, 4), dtype=np.float32)},
        keys={"user": ["id:0", "id:1", "id:2", "id:3"], "hashtag": []},
        relations={},
        user_handles=[None] * 4,
    )
    authors = ["0", "0", "1", "2", "3", "99"]
    posts = [Post(id=str(i), text="t", author=UserRef(id=a)) for i, a in enumerate(authors)]
    return emb, posts


def test_mining_finds_planted_neighbours_never_self_or_same_author():
    emb, posts = _planted()
    pairs = mine_pairs(posts, emb, ["author"], k=1)
    first = pairs[:, 0].tolist()
    assert first[2] in (0, 1)  # posts 0 and 1 (author 0) tie as post 2's nearest
    assert first[:2] + first[3:] == [2, 2, 4, 3, -1]  # never the same-author twin
    # With k=4 every positive is another author's post with a known NTU, or -1.
    pairs = mine_pairs(posts, emb, ["author"], k=4)
    for i, row in enumerate(pairs):
        for j in row[row >= 0]:
            assert j != i and posts[j].author != posts[i].author and j != 5
    assert (pairs[5] == -1).all() and (pairs[0] >= 0).sum() == 3


def test_faiss_and_exact_topk_agree():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    groups = rng.integers(0, 40, size=300)
    ei, es = topk_exact(x, groups, 5, chunk=64)
    fi, fs = topk_faiss(x, groups, 5)
    assert (groups[ei] != groups[:, None]).all() and (ei != np.arange(300)[:, None]).all()
    assert all(set(a) == set(b) for a, b in zip(ei, fi, strict=True))
    np.testing.assert_allclose(es, fs, atol=1e-5, rtol=0)


def test_pick_partners_draws_only_mined_positives():
    pairs = np.array([[3, 4], [-1, -1], [0, -1], [1, 2], [0, 1]])
    anchors, partners = pick_partners(pairs, np.arange(5), np.random.default_rng(0))
    assert anchors.tolist() == [0, 2, 3, 4]
    for a, p in zip(anchors, partners, strict=True):
        assert p in pairs[a][pairs[a] >= 0]


def test_text_view_ignores_ntus_and_social_loss_trains_the_encoder(backbone, ntu, tokenizer):
    model = _model(backbone, ntu).train()
    ids, mask = pad(tokenize(TEXTS, tokenizer, 16, TextNormConfig()), tokenizer.pad_token_id)
    torch.manual_seed(1)
    z = text_embeddings(model, ids, mask)
    assert z.shape == (4, 32)
    loss = nt_xent(z[:2], z[2:], 0.1)
    loss.backward()
    assert model.projection.weight.grad is None  # the text view never sees the NTU token
    assert model.base.embeddings.word_embeddings.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- gate pooling
def test_gate_starts_as_the_average_and_encode_width_is_h(backbone, ntu):
    gate = GatePooling(4)
    m, z = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(gate(m, z), (m + z) / 2)
    model = _model(backbone, ntu, social_weight=1.0, pooling_gate=True)
    posts = _posts(5)
    out = encode(model, posts, pooling="gate")
    both = encode(model, posts, pooling="mean+ntu")
    assert out.shape == (5, 32)
    np.testing.assert_allclose(out, (both[:, :32] + both[:, 32:]) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="gate"):
        encode(_model(backbone, ntu), posts, pooling="gate")


# ---------------------------------------------------------------------------- train, save, resume
FUSED = {
    "ntu_tokens": "per_type",
    "ntu_types": ["author", "hashtag"],
    "ntu_absent": "drop",
    "ntu_dropout": 0.3,
    "social_weight": 0.5,
    "social_k": 2,
    "pooling_gate": True,
}


def test_fused_finetune_save_load_round_trip(backbone, ntu, tmp_path):
    res = finetune(_posts(), _cfg(backbone, **FUSED), tmp_path / "m", ntu=ntu)
    assert 0.5 < res.social_posts < 1.0  # author 4 is unknown and has no hashtag on most posts
    assert (tmp_path / "m" / FUSION).exists()
    model = NTULM.load(tmp_path / "m")
    assert model.typed.absent == "drop" and model.gate is not None
    posts = _posts(9)
    for pooling in ("mean", "mean+ntu", "gate"):
        a = model.encode(posts, pooling=pooling)
        assert np.isfinite(a).all()
        model.save(tmp_path / "copy")
        np.testing.assert_array_equal(
            a, NTULM.load(tmp_path / "copy").encode(posts, pooling=pooling)
        )
    # The gate was trained (it starts at zero weights).
    assert model.gate.gate.weight.abs().sum() > 0


def test_fused_resume_reaches_the_same_result(backbone, ntu, tmp_path):
    cfg = _cfg(backbone, max_epochs=2, checkpoint_every=2, patience=5, **FUSED)
    finetune(_posts(), cfg, tmp_path / "full", ntu=ntu)

    class Stop(Exception):
        pass

    def interrupt(step: int) -> None:
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        finetune(_posts(), cfg, tmp_path / "cut", ntu=ntu, on_step=interrupt)
    res = finetune(_posts(), cfg, tmp_path / "cut", ntu=ntu, resume=True)
    full = json.loads((tmp_path / "full" / "train_result.json").read_text())
    assert res.eval_bits == pytest.approx(full["eval_bits"], abs=1e-6)
    posts = _posts(8)
    np.testing.assert_allclose(
        NTULM.load(tmp_path / "full").encode(posts, pooling="gate"),
        NTULM.load(tmp_path / "cut").encode(posts, pooling="gate"),
        atol=1e-6,
    )


def test_social_and_dropout_change_training_and_need_embeddings(backbone, ntu, tmp_path):
    plain = finetune(_posts(), _cfg(backbone), tmp_path / "a", ntu=ntu)
    social = finetune(_posts(), _cfg(backbone, social_weight=1.0), tmp_path / "b", ntu=ntu)
    dropped = finetune(_posts(), _cfg(backbone, ntu_dropout=0.5), tmp_path / "c", ntu=ntu)
    assert social.eval_bits != plain.eval_bits and dropped.eval_bits != plain.eval_bits
    with pytest.raises(ConfigError, match="mine pairs"):
        finetune(_posts(), _cfg(backbone, use_ntu=False, social_weight=1.0), tmp_path / "d")
    # The text-only baseline can take the social objective (TwHIN-BERT without NTU tokens).
    text = finetune(
        _posts(), _cfg(backbone, use_ntu=False, social_weight=1.0), tmp_path / "e", ntu=ntu
    )
    assert text.social_posts > 0 and not NTULM.load(tmp_path / "e").use_ntu


def test_model_saved_before_the_fusion_options_still_loads(backbone, ntu, tmp_path):
    """A paper model writes no fusion file; stripping the new keys from lm.json and
    lm_config.json (what the code before this change wrote) still loads to the same model."""
    model = _model(backbone, ntu)
    model.save(tmp_path / "m")
    assert not (tmp_path / "m" / FUSION).exists()
    new_meta = {"ntu_tokens", "n_types", "ntu_absent", "pooling_gate"}
    new_cfg = set(LMConfig.model_fields) - set(_OLD_LM_FIELDS)
    assert new_cfg == {
        "ntu_tokens",
        "ntu_absent",
        "ntu_dropout",
        "social_weight",
        "social_temperature",
        "social_k",
        "social_exact_max",
        "pooling_gate",
        "ntu_warmup",
        "ntu_lr",
        "ntu_shuffle",
        "backbone_dropout",
        "eval_every",
    }
    for name, drop in ((LM_META, new_meta), (LM_CONFIG, new_cfg)):
        p = tmp_path / "m" / name
        d = json.loads(p.read_text())
        p.write_text(json.dumps({k: v for k, v in d.items() if k not in drop}))
    old = NTULM.load(tmp_path / "m")
    assert old.projection is not None and old.typed is None and old.gate is None
    posts = _posts(6)
    np.testing.assert_array_equal(encode(model, posts), encode(old, posts))
    e = ntu_vectors(posts, ntu, ["author", "hashtag"])[0]
    # the NTU lookup of the loaded model: injected and appended, as the given e_ntu rows
    looked_up = encode(old, posts, concat_ntu=True)
    np.testing.assert_array_equal(looked_up, encode(old, posts, ntus=e, concat_ntu=True))


_OLD_LM_FIELDS = (
    "backbone use_ntu ntu_types ntu_layernorm text max_length mlm_probability batch_size lr "
    "weight_decay warmup_ratio max_epochs max_steps patience head_warmup_steps head_warmup_lr "
    "eval_fraction eval_max_posts max_posts sample_rate checkpoint_every group_by_length "
    "group_size train_dtype seed num_threads progress device"
).split()


def test_encode_refuses_ntu_rows_of_the_wrong_shape(backbone, ntu):
    model = _model(backbone, ntu, ntu_tokens="per_type")
    with pytest.raises(ConfigError, match="per-type"):
        encode(model, _posts(2), ntus=np.zeros((2, 8), dtype=np.float32))


def test_default_config_dump_is_unchanged_so_fingerprints_and_caches_are():
    assert set(LMConfig().model_dump(mode="json")) == set(_OLD_LM_FIELDS)
    cfg = LMConfig.build({"ntu_tokens": "per_type", "social_weight": 0.5})
    dump = cfg.model_dump(mode="json")
    assert dump["ntu_tokens"] == "per_type" and "ntu_dropout" not in dump
    assert LMConfig.build(dump) == cfg
    assert "lm" not in VariantSpec(name="x").model_dump()


# ---------------------------------------------------------------------------- pipeline variants
def test_pipeline_variant_sets_its_own_lm_fields():
    base = {"posts": ["x"], "eval": {"tasks": [{"type": "hashtag"}]}, "lm": {"max_steps": 7}}
    lm = {"ntu_tokens": "per_type", "social_weight": 0.5, "pooling_gate": True}
    cfg = PipelineConfig.build({**base, "variants": [
        {"name": "BERT", "use_ntu": False},
        {"name": "N", "ntu_types": ["author"]},
        {"name": "F", "lm": lm},
        {"name": "F gate", "model_of": "F", "pooling": "gate"},
    ]})  # fmt: skip
    f = cfg.lm_config(cfg.variants[2], 5)
    assert (f.ntu_tokens, f.social_weight, f.pooling_gate, f.max_steps, f.seed) == (
        "per_type",
        0.5,
        True,
        7,
        5,
    )
    # A variant without lm fields gets exactly what the pipeline built before.
    n = cfg.variants[1]
    old = cfg.lm.model_copy(update={"use_ntu": n.use_ntu, "ntu_types": n.ntu_types, "seed": 5})
    assert cfg.lm_config(n, 5).model_dump() == old.model_dump()
    for variants, needle in (
        ([{"name": "N", "lm": {"seed": 3}}], "not in lm"),
        ([{"name": "N", "lm": {"pooling_gate": True}}], "pooling_gate"),
        ([{"name": "N"}, {"name": "N g", "model_of": "N", "pooling": "gate"}], "pooling 'gate'"),
        ([{"name": "N", "lm": {"nope": 1}}], "nope"),
    ):
        with pytest.raises(ConfigError, match=needle):
            PipelineConfig.build(
                {**base, "variants": [{"name": "BERT", "use_ntu": False}, *variants]}
            )


def test_mining_above_the_exact_threshold_uses_faiss_and_agrees():
    rng = np.random.default_rng(3)
    emb = NTUEmbeddings(
        tables={"user": rng.normal(size=(12, 6)).astype(np.float32)},
        keys={"user": [f"id:{i}" for i in range(12)]},
        relations={},
        user_handles=[None] * 12,
    )
    posts = [Post(id=str(i), text="t", author=UserRef(id=str(i % 13))) for i in range(80)]
    exact = mine_pairs(posts, emb, ["author"], k=10)  # ~6 posts per author: crosses authors
    approx = mine_pairs(posts, emb, ["author"], k=10, exact_max=10)
    author = np.append(np.arange(80) % 13, -1)  # index -1 (no positive) -> author -1
    # One author's posts have one vector and tie: compare the neighbours' authors, rank by rank.
    np.testing.assert_array_equal(author[exact], author[approx])
    assert (exact[12::13] == -1).all() and (author[exact] != (np.arange(80) % 13)[:, None]).all()
