"""The NTU-enriched LM (paper §3.2-3.3) on a tiny BERT built in code: injection, masking,
padding, e_ntu, gradients, save/load, encode, resume, CLI. Offline and a few seconds each."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import BertModel  # noqa: E402

from conftest import tiny_bert_config  # noqa: E402
from ntulm.cli import main  # noqa: E402
from ntulm.kge import NTUEmbeddings  # noqa: E402
from ntulm.lm import NTULM, LMConfig, TextNormConfig, encode, finetune, normalize_text  # noqa: E402
from ntulm.lm.data import (  # noqa: E402
    fixed_eval_masks,
    length_grouped_batches,
    mask_tokens,
    ntu_vectors,
    pad,
    tokenize,
)
from ntulm.posts import Post, PostReader, UserRef  # noqa: E402

TEXTS = [
    "the cat sat on the mat",
    "vote today #maga",
    "breaking news about the election in ohio tonight",
    "hello",
    "great rally with @bob today http://t.co/xyz",
    "the dog chased the cat around the garden",
]


@pytest.fixture(scope="module")
def headless_backbone(tmp_path_factory, tokenizer) -> str:
    """A tiny encoder without MLM head (like all-MiniLM-L6-v2)."""
    d = tmp_path_factory.mktemp("tiny_encoder")
    torch.manual_seed(0)
    BertModel(tiny_bert_config(tokenizer), add_pooling_layer=False).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return str(d)


def _posts(n: int = 40) -> list[Post]:
    return [
        Post(
            id=str(i),
            text=TEXTS[i % len(TEXTS)] + f" {i}",
            author=UserRef(id=str(i % 4)),
            hashtags=["maga"] if i % 3 == 0 else [],
        )
        for i in range(n)
    ]


def _cfg(backbone: str, **kw) -> LMConfig:
    return LMConfig.build(
        {
            "backbone": backbone,
            "batch_size": 8,
            "max_epochs": 1,
            "progress": False,
            "max_length": 16,
            **kw,
        }
    )


def _model(backbone: str, ntu: NTUEmbeddings, **kw) -> NTULM:
    torch.manual_seed(0)
    model, _ = NTULM.from_backbone(_cfg(backbone, **kw), ntu.dim)
    model.ntu = ntu
    return model.eval()


# ---------------------------------------------------------------------------- text and data
def test_normalize_text():
    cfg = TextNormConfig()
    assert (
        normalize_text("RT @Bob_1: see https://t.co/x &amp; more  now", cfg)
        == "RT @user: see http & more now"
    )
    assert normalize_text("mail a@b.com", cfg) == "mail a@b.com"  # not a mention
    keep = TextNormConfig(mentions=None, urls=None)
    assert normalize_text("@Bob https://x.y", keep) == "@Bob https://x.y"


def test_e_ntu_is_mean_of_ntus_with_table_mean_for_unknown(ntu):
    mean = ntu.mean
    posts = [
        Post(id="a", text="x"),  # no NTUs
        Post(id="b", text="x", author=UserRef(id="99")),  # unknown author
        Post(id="c", text="x", author=UserRef(id="2")),  # known author
        Post(id="d", text="x", author=UserRef(id="1"), hashtags=["#MAGA", "unknowntag"]),
        Post(id="e", text="x", author=UserRef(handle="Carol"), mentions=[UserRef(id="2")]),
    ]
    e, overlap = ntu_vectors(posts, ntu, ["author", "hashtag"])
    assert e.dtype == np.float32 and e.shape == (5, 8)
    np.testing.assert_allclose(e[0], mean, rtol=1e-6)
    np.testing.assert_allclose(e[1], mean, rtol=1e-6)
    np.testing.assert_allclose(e[2], ntu.tables["user"][1], rtol=1e-6)
    np.testing.assert_allclose(
        e[3], (ntu.tables["user"][0] + ntu.tables["hashtag"][0] + mean) / 3, rtol=1e-5
    )
    np.testing.assert_allclose(e[4], ntu.tables["user"][2], rtol=1e-6)  # mentions not configured
    assert overlap.tolist() == [False, False, True, True, True]
    e2, _ = ntu_vectors(posts[4:], ntu, ["author", "mention"])
    np.testing.assert_allclose(
        e2[0], (ntu.tables["user"][2] + ntu.tables["user"][1]) / 2, rtol=1e-5
    )


def test_masking_80_10_10_and_never_special_or_padding(tokenizer):
    gen = torch.Generator().manual_seed(0)
    seqs = tokenize(TEXTS * 200, tokenizer, 32, TextNormConfig())
    ids, mask = pad(seqs, tokenizer.pad_token_id)
    masked, labels = mask_tokens(ids, mask, tokenizer, 0.15, gen)
    target = labels != -100
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    assert not (target & special).any() and not (target & (mask == 0)).any()
    rate = target.sum() / ((mask == 1) & ~special).sum()
    assert 0.13 < rate < 0.17
    assert (labels[target] == ids[target]).all()
    frac_mask = (masked[target] == tokenizer.mask_token_id).float().mean()
    frac_kept = (masked[target] == ids[target]).float().mean()
    assert 0.75 < frac_mask < 0.85 and 0.07 < frac_kept < 0.15
    assert (masked[~target] == ids[~target]).all()


def test_fixed_eval_masks_are_reproducible(tokenizer):
    seqs = tokenize(TEXTS, tokenizer, 16, TextNormConfig())
    a, b = fixed_eval_masks(seqs, tokenizer, 0.5, 3), fixed_eval_masks(seqs, tokenizer, 0.5, 3)
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b, strict=True))


def test_length_grouped_batches_cover_every_index_once():
    lengths = np.random.default_rng(0).integers(3, 60, size=103)
    for rng in (None, np.random.default_rng(1)):
        batches = length_grouped_batches(lengths, 8, 4, rng)
        assert sorted(np.concatenate(batches).tolist()) == list(range(103))
    inference = length_grouped_batches(lengths, 8)
    assert all(
        lengths[b].max() <= lengths[a].min() for a, b in zip(inference, inference[1:], strict=False)
    )


def test_training_batches_grouped_pad_less_and_are_seeded():
    from ntulm.lm.data import training_batches

    lengths = np.random.default_rng(0).integers(3, 60, size=400)

    def padding(batches):
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches)

    grouped = training_batches(lengths, LMConfig(batch_size=16), np.random.default_rng(1))
    plain = training_batches(
        lengths, LMConfig(batch_size=16, group_by_length=False), np.random.default_rng(1)
    )
    for batches in (grouped, plain):
        assert sorted(np.concatenate(batches).tolist()) == list(range(400))
    assert padding(grouped) < padding(plain) / 4
    again = training_batches(lengths, LMConfig(batch_size=16), np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(grouped, again, strict=True))


def test_train_dtype_auto_follows_native_bf16(monkeypatch):
    from ntulm.lm import config
    from ntulm.lm.config import resolve_dtype

    # Where the kernel gives no CPU flags, torch's own check decides.
    monkeypatch.setattr(config, "cpu_flags", lambda: None)
    for avx512_bf16, amx, want in ((False, False, "float32"), (True, False, "bfloat16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_dtype("auto", "cpu") == want
        assert resolve_dtype("float32", "cpu") == "float32"
    # On Linux the flags of /proc/cpuinfo decide, without torch.
    for flags, want in (
        ({"avx2", "avx512f"}, "float32"),
        ({"avx512f", "avx512_bf16"}, "bfloat16"),
        ({"amx_tile", "amx_bf16"}, "bfloat16"),
    ):
        monkeypatch.setattr(config, "cpu_flags", lambda f=flags: f)
        assert resolve_dtype("auto", "cpu") == want
    with pytest.raises(ValueError, match="train_dtype"):
        LMConfig(train_dtype="float16")


# ---------------------------------------------------------------------------- model
def test_one_more_position_than_tokens_and_ntu_slot_never_labelled(backbone, ntu, tokenizer):
    model = _model(backbone, ntu)
    seqs = tokenize(TEXTS[:3], tokenizer, 16, TextNormConfig())
    ids, mask = pad(seqs, tokenizer.pad_token_id)
    e = torch.from_numpy(ntu_vectors(_posts(3), ntu, ["author"])[0])
    hidden, full_mask = model.hidden_states(ids, mask, e)
    B, T = ids.shape
    assert hidden.shape == (B, T + 1, 32) and full_mask.shape == (B, T + 1)
    assert (full_mask[:, -1] == 1).all() and (full_mask[:, :T] == mask).all()
    # The labels span the T text positions only: the head sees exactly the masked text positions.
    masked, labels = mask_tokens(ids, mask, tokenizer, 0.5, torch.Generator().manual_seed(0))
    assert labels.shape == (B, T)
    seen = []
    handle = model.head.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    _, n = model.mlm_loss(masked, mask, labels, e)
    handle.remove()
    assert seen == [n] and n == int((labels != -100).sum())


def test_masks_right_under_padding(backbone, ntu, tokenizer):
    """A short post padded next to a long one gives the same hidden states (real tokens and the NTU
    token) as the post alone."""
    model = _model(backbone, ntu)
    seqs = tokenize([TEXTS[3], TEXTS[2]], tokenizer, 16, TextNormConfig())
    e = torch.from_numpy(ntu_vectors(_posts(2), ntu, ["author", "hashtag"])[0])
    with torch.no_grad():
        ids, mask = pad(seqs, tokenizer.pad_token_id)
        both, _ = model.hidden_states(ids, mask, e)
        ids1, mask1 = pad(seqs[:1], tokenizer.pad_token_id)
        alone, _ = model.hidden_states(ids1, mask1, e[:1])
    n = len(seqs[0])
    torch.testing.assert_close(both[0, :n], alone[0, :n], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[0, -1], alone[0, -1], rtol=1e-4, atol=1e-5)
    posts = _posts(6)
    np.testing.assert_allclose(
        encode(model, posts, batch_size=1), encode(model, posts, batch_size=6), rtol=1e-4, atol=1e-5
    )


def test_post_without_ntus_gets_the_mean_vector(backbone, ntu):
    model = _model(backbone, ntu)
    text = "no ntus here"
    plain = encode(model, [text])
    with_mean = encode(model, [text], ntus=ntu.mean[None])
    np.testing.assert_allclose(plain, with_mean, rtol=1e-5, atol=1e-6)
    _, overlap = encode(model, [Post(id="x", text=text), _posts(3)[2]], return_overlap=True)
    assert overlap.tolist() == [False, True]


def test_gradients_reach_the_projection(backbone, ntu, tokenizer):
    model = _model(backbone, ntu).train()
    ids, mask = pad(tokenize(TEXTS, tokenizer, 16, TextNormConfig()), tokenizer.pad_token_id)
    masked, labels = mask_tokens(ids, mask, tokenizer, 0.3, torch.Generator().manual_seed(0))
    e = torch.from_numpy(ntu_vectors(_posts(len(TEXTS)), ntu, ["author", "hashtag"])[0])
    loss, _ = model.mlm_loss(masked, mask, labels, e)
    loss.backward()
    assert model.projection.weight.grad is not None and model.projection.weight.grad.abs().sum() > 0
    assert model.base.embeddings.word_embeddings.weight.grad is not None


def test_headless_backbone_gets_a_tied_head_and_warms_up(headless_backbone, ntu, tmp_path):
    model, head_new = NTULM.from_backbone(_cfg(headless_backbone), ntu.dim)
    assert head_new
    assert model.head.predictions.decoder.weight is model.base.embeddings.word_embeddings.weight
    res = finetune(
        _posts(30), _cfg(headless_backbone, head_warmup_steps=3), tmp_path / "m", ntu=ntu
    )
    assert res.head_warmup_steps == 3 and res.steps == 4


# ---------------------------------------------------------------------------- train, save, encode
def test_finetune_save_load_identical_and_deterministic(backbone, ntu, tmp_path):
    res = finetune(_posts(), _cfg(backbone, max_epochs=2), tmp_path / "m", ntu=ntu)
    assert res.epochs == 2 and len(res.eval_bits) == 2 and res.n_eval == 2
    assert (tmp_path / "m" / "DONE.json").exists() and not (
        tmp_path / "m" / "checkpoint.pt"
    ).exists()
    model = NTULM.load(tmp_path / "m")
    posts = _posts(10)
    a = model.encode(posts, batch_size=4, concat_ntu=False)
    assert a.shape == (10, 32) and np.isfinite(a).all()
    np.testing.assert_array_equal(
        a, model.encode(posts, batch_size=4, concat_ntu=False)
    )  # deterministic
    again = NTULM.load(tmp_path / "m")
    np.testing.assert_array_equal(
        a, again.encode(posts, batch_size=4, concat_ntu=False)
    )  # load is exact
    # Saving the loaded model and loading it again gives identical embeddings.
    again.save(tmp_path / "copy")
    np.testing.assert_array_equal(
        a, NTULM.load(tmp_path / "copy").encode(posts, batch_size=4, concat_ntu=False)
    )


@pytest.mark.parametrize(
    "opts",
    [
        {"train_dtype": "float32"},
        {"train_dtype": "bfloat16"},  # autocast: still bit-exact on resume
        {"train_dtype": "bfloat16", "group_by_length": False},
    ],
)
def test_resume_reaches_the_same_result(backbone, ntu, tmp_path, opts):
    cfg = _cfg(backbone, max_epochs=2, checkpoint_every=2, patience=5, **opts)
    finetune(_posts(), cfg, tmp_path / "full", ntu=ntu)

    class Stop(Exception):
        pass

    def interrupt(step: int) -> None:
        if step == 7:
            raise Stop

    with pytest.raises(Stop):
        finetune(_posts(), cfg, tmp_path / "cut", ntu=ntu, on_step=interrupt)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    res = finetune(_posts(), cfg, tmp_path / "cut", ntu=ntu, resume=True)
    full = json.loads((tmp_path / "full" / "train_result.json").read_text())
    assert res.eval_bits == pytest.approx(full["eval_bits"], abs=1e-6)
    # Resuming a finished run changes nothing.
    assert (
        finetune(_posts(), cfg, tmp_path / "full", ntu=ntu, resume=True).eval_bits
        == full["eval_bits"]
    )
    posts = _posts(8)
    np.testing.assert_allclose(
        NTULM.load(tmp_path / "full").encode(posts),
        NTULM.load(tmp_path / "cut").encode(posts),
        atol=1e-6,
    )


def test_bfloat16_training_keeps_float32_weights_and_state(backbone, ntu, tmp_path):
    class Stop(Exception):
        pass

    def interrupt(step: int) -> None:
        if step == 4:
            raise Stop

    cfg = _cfg(backbone, checkpoint_every=2, train_dtype="bfloat16")
    with pytest.raises(Stop):
        finetune(_posts(), cfg, tmp_path / "bf16", ntu=ntu, on_step=interrupt)
    # The checkpoint holds tensors and plain values only: it loads without unpickling objects.
    saved = torch.load(tmp_path / "bf16" / "checkpoint.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in saved["model"].values() if v.is_floating_point())
    moments = [t for st in saved["optimizer"]["state"].values() for t in st.values() if t.ndim]
    assert moments and all(t.dtype == torch.float32 for t in moments)
    res16 = finetune(_posts(), cfg, tmp_path / "bf16", ntu=ntu, resume=True)
    res32 = finetune(_posts(), _cfg(backbone, train_dtype="float32"), tmp_path / "f32", ntu=ntu)
    assert (res16.train_dtype, res32.train_dtype) == ("bfloat16", "float32")
    # bf16 arithmetic really ran (the runs differ) and lands close to float32.
    assert res16.eval_bits != res32.eval_bits
    assert res16.eval_bits[0] == pytest.approx(res32.eval_bits[0], abs=0.1)
    model = NTULM.load(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_resume_refuses_another_config_and_removes_orphan_tmp(backbone, ntu, tmp_path):
    from ntulm.errors import ConfigError

    class Stop(Exception):
        pass

    def interrupt(step: int) -> None:
        if step == 3:
            raise Stop

    out = tmp_path / "m"
    cfg = _cfg(backbone, checkpoint_every=2, train_dtype="float32")
    with pytest.raises(Stop):
        finetune(_posts(), cfg, out, ntu=ntu, on_step=interrupt)
    orphan = out / ".checkpoint.pt.k2j4x.tmp"  # as left by a run killed while saving
    orphan.write_bytes(b"half a checkpoint")
    other = _cfg(backbone, checkpoint_every=2, train_dtype="bfloat16")
    with pytest.raises(ConfigError, match="another configuration or dtype"):
        finetune(_posts(), other, out, ntu=ntu, resume=True)
    assert not orphan.exists()
    assert finetune(_posts(), cfg, out, ntu=ntu, resume=True).steps == 5


def test_no_ntu_baseline_and_post_concat(backbone, ntu, tmp_path):
    finetune(_posts(), _cfg(backbone, use_ntu=False), tmp_path / "bert", ntu=ntu)
    model = NTULM.load(tmp_path / "bert")
    assert model.projection is None
    posts = _posts(5)
    plain = model.encode(posts, concat_ntu=False)
    concat = model.encode(posts, concat_ntu=True)
    assert plain.shape == (5, 32) and concat.shape == (5, 40)
    np.testing.assert_array_equal(concat[:, :32], plain)
    np.testing.assert_allclose(concat[:, 32:], ntu_vectors(posts, ntu, ["author", "hashtag"])[0])


def test_recommended_embedding_appends_the_author_vector_by_default(backbone, ntu, tmp_path):
    """encode's default for a model carrying NTU embeddings is [mean pooling ; the author's
    vector] (the recommended embedding, design round 4), for an NTULM and for the no-NTU model;
    concat_ntu=True alone appends e_ntu (the paper's post-concat), concat_ntu=False nothing; given
    e_ntu rows, or a table without users, make the default append e_ntu."""
    from ntulm.errors import ConfigError
    from ntulm.kge import NTUEmbeddings
    from ntulm.lm.encode import output_dim, recommended_types

    finetune(_posts(), _cfg(backbone, max_steps=2), tmp_path / "ntulm", ntu=ntu)
    model = NTULM.load(tmp_path / "ntulm")
    posts = _posts(5)
    default, paper = model.encode(posts), model.encode(posts, concat_ntu=False)
    author = ntu_vectors(posts, ntu, ["author"])[0]
    e_ntu = ntu_vectors(posts, ntu, ["author", "hashtag"])[0]
    assert not np.allclose(author, e_ntu)  # the two appended vectors differ on these posts
    assert paper.shape == (5, 32) and default.shape == (5, 32 + ntu.dim)
    assert output_dim(model) == 32 + ntu.dim and output_dim(model, concat_ntu=False) == 32
    np.testing.assert_array_equal(default[:, :32], paper)
    np.testing.assert_allclose(default[:, 32:], author)
    np.testing.assert_allclose(model.encode(posts, concat_ntu=True)[:, 32:], e_ntu)
    both = model.encode(posts, concat_types=["author", "hashtag"])
    np.testing.assert_allclose(both[:, 32:], e_ntu)
    # concat_per_type: the author's and the hashtags' vectors side by side, not their mean
    apart = model.encode(posts, concat_types=["author", "hashtag"], concat_per_type=True)
    hashtags = ntu_vectors(posts, ntu, ["hashtag"])[0]
    assert apart.shape == (5, 32 + 2 * ntu.dim)
    assert (
        output_dim(model, concat_types=["author", "hashtag"], concat_per_type=True)
        == apart.shape[1]
    )
    np.testing.assert_array_equal(apart[:, :32], paper)
    np.testing.assert_allclose(apart[:, 32 : 32 + ntu.dim], author)
    np.testing.assert_allclose(apart[:, 32 + ntu.dim :], hashtags)
    with pytest.raises(ConfigError, match="concat_per_type"):
        model.encode(posts, concat_per_type=True)
    # concat_scale: a type's appended block times its weight, the rest unchanged
    both_types = {"concat_types": ["author", "hashtag"], "concat_per_type": True}
    weighed = model.encode(posts, concat_scale={"hashtag": 0.1}, **both_types)
    np.testing.assert_array_equal(weighed[:, : 32 + ntu.dim], apart[:, : 32 + ntu.dim])
    np.testing.assert_allclose(weighed[:, 32 + ntu.dim :], 0.1 * hashtags, rtol=1e-6)
    np.testing.assert_array_equal(
        model.encode(posts, concat_scale={"hashtag": 1}, **both_types), apart
    )
    for bad, why in (
        ({"concat_scale": {"hashtag": 0.1}}, "needs concat_types"),
        ({"concat_types": ["author"], "concat_scale": {"hashtag": 2}}, "not among the appended"),
        ({"concat_types": ["author", "hashtag"], "concat_scale": {"hashtag": 2}}, "per-type"),
        ({"concat_types": ["author"], "concat_scale": {"author": 0.0}}, "must be > 0"),
    ):
        with pytest.raises(ConfigError, match=f"concat_scale: .*{why}"):
            model.encode(posts, **bad)
    assert model.encode(posts, text_only=True).shape == (5, 32)
    rows = np.zeros((5, ntu.dim), np.float32) + 0.5  # given e_ntu rows: appended as given
    np.testing.assert_array_equal(model.encode(posts, ntus=rows)[:, 32:], rows)
    with pytest.raises(ConfigError, match="concat_types"):
        model.encode(posts, concat_ntu=False, concat_types=["author"])
    with pytest.raises(ConfigError, match="not ntus="):
        model.encode(posts, ntus=rows, concat_types=["author"])
    # a table without users: no author vector to append, the model's e_ntu instead
    model.ntu = NTUEmbeddings(
        tables={"hashtag": ntu.tables["hashtag"]}, keys={"hashtag": ntu.keys["hashtag"]},
        relations={}, user_handles=[],
    )  # fmt: skip
    assert recommended_types(model) is None
    np.testing.assert_allclose(
        model.encode(posts)[:, 32:], ntu_vectors(posts, model.ntu, ["author", "hashtag"])[0]
    )
    finetune(_posts(), _cfg(backbone, use_ntu=False, max_steps=2), tmp_path / "bert", ntu=ntu)
    bert = NTULM.load(tmp_path / "bert")
    plain = bert.encode(posts, concat_ntu=False)
    assert plain.shape == (5, 32) and output_dim(bert) == 32 + ntu.dim
    np.testing.assert_array_equal(bert.encode(posts)[:, :32], plain)
    np.testing.assert_allclose(bert.encode(posts)[:, 32:], author)  # BERT + the author's vector
    bert.ntu = None  # without NTU embeddings there is nothing to append
    assert bert.encode(posts).shape == (5, 32) and output_dim(bert) == 32


def test_config_errors_name_the_field():
    from ntulm.errors import ConfigError

    with pytest.raises(ConfigError, match="ntu_types"):
        LMConfig.build({"ntu_types": ["url"]})
    with pytest.raises(ConfigError, match="lr"):
        LMConfig.build({"lr": -1})


# ---------------------------------------------------------------------------- CLI
def _write_posts(path: Path, n: int = 30) -> Path:
    with path.open("w") as fh:
        for p in _posts(n):
            fh.write(json.dumps(p.to_json()) + "\n")
    return path


def test_cli_finetune_and_embed(backbone, ntu, tmp_path, capsys, monkeypatch):
    posts = _write_posts(tmp_path / "posts.jsonl")
    ntu.save(tmp_path / "ntu")
    rc = main(
        [
            "-q",
            "finetune",
            "--posts",
            str(posts),
            "--ntu",
            str(tmp_path / "ntu"),
            "--out",
            str(tmp_path / "m"),
            f"backbone={backbone}",
            "batch_size=8",
            "max_epochs=1",
            "max_length=16",
        ]
    )
    assert rc == 0
    out = tmp_path / "e.parquet"
    assert (
        main(
            [
                "-q",
                "embed",
                "--model",
                str(tmp_path / "m"),
                "--posts",
                str(posts),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = pq.read_table(out)
    assert table.column_names == ["id", "embedding", "overlap"] and table.num_rows == 30
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    model = NTULM.load(tmp_path / "m")
    read = [p for p, _ in PostReader().iter_posts([posts])]  # hashtags re-extracted from the text
    np.testing.assert_allclose(emb, model.encode(read), rtol=1e-4, atol=1e-5)
    expected = [p.author.id in ("1", "2") or "maga" in p.hashtags for p in read]  # a known NTU
    assert table.column("overlap").to_pylist() == expected
    np.testing.assert_allclose(emb[:, -ntu.dim :], ntu_vectors(read, ntu, ["author"])[0])
    # --concat-ntu-types author,hashtag: their mean appended instead of the author's vector
    args = ["-q", "embed", "--model", str(tmp_path / "m"), "--posts", str(posts)]
    both = ["--concat-ntu-types", "author,hashtag"]
    assert main([*args, "--out", str(tmp_path / "a.parquet"), *both]) == 0
    got = np.stack(pq.read_table(tmp_path / "a.parquet").column("embedding").to_numpy(False))
    np.testing.assert_allclose(got[:, -ntu.dim :], ntu_vectors(read, ntu, ["author", "hashtag"])[0])
    np.testing.assert_allclose(got[:, : -ntu.dim], emb[:, : -ntu.dim], atol=1e-5)
    # --concat-per-type: the two vectors side by side, through one process and through --nproc
    from ntulm.lm.shards import read_embeddings

    for extra in ([], ["--nproc", "1"]):
        out_c = tmp_path / f"c{len(extra)}.parquet"
        assert main([*args, "--out", str(out_c), *both, "--concat-per-type", *extra]) == 0
        got = read_embeddings(out_c)  # --nproc writes a directory of shards
        apart = np.stack(got.column("embedding").to_numpy(False))
        assert apart.shape[1] == emb.shape[1] + ntu.dim
        np.testing.assert_allclose(
            apart[:, -2 * ntu.dim : -ntu.dim], ntu_vectors(read, ntu, ["author"])[0]
        )
        np.testing.assert_allclose(apart[:, -ntu.dim :], ntu_vectors(read, ntu, ["hashtag"])[0])
    capsys.readouterr()
    with pytest.raises(SystemExit):  # argparse: exit 2 naming the bad type
        main([*args, "--out", str(tmp_path / "b.parquet"), "--concat-ntu-types", "colour"])
    assert "unknown NTU type" in capsys.readouterr().err
    # --device cuda where torch sees no GPU: one line, exit 2, for one process and for shards
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for extra in ([], ["--nproc", "1"]):
        out_d = tmp_path / f"d{len(extra)}.parquet"
        assert main([*args, "--out", str(out_d), "--device", "cuda", *extra]) == 2
        assert "--device: cuda, but torch sees no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--ntu", "/nonexistent/ntu"], "no such directory"),
        ([], "--ntu DIR is required"),
    ],
)
def test_cli_errors_are_one_line_exit_2(backbone, tmp_path, capsys, extra, needle):
    posts = _write_posts(tmp_path / "posts.jsonl", 5)
    rc = main(
        [
            "-q",
            "finetune",
            "--posts",
            str(posts),
            "--out",
            str(tmp_path / "m"),
            *extra,
            f"backbone={backbone}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "\n" not in err and "Traceback" not in err


def test_cli_bad_posts_path_exit_2(backbone, tmp_path, capsys):
    rc = main(
        [
            "-q",
            "finetune",
            "--posts",
            str(tmp_path / "missing.jsonl"),
            "--no-ntu",
            "--out",
            str(tmp_path / "m"),
            f"backbone={backbone}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no such file" in err and "\n" not in err


def test_bfloat16_encode_is_close_to_float32(backbone, ntu):
    from ntulm.errors import ConfigError
    from ntulm.lm.encode import encode

    model = _model(backbone, ntu)
    posts = _posts(8)
    a = encode(model, posts, batch_size=4)
    b = encode(model, posts, batch_size=4, dtype="bfloat16")
    assert b.dtype == np.float32 and b.shape == a.shape
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
    with pytest.raises(ConfigError, match="dtype: 'float16' is not float32, bfloat16 or auto"):
        encode(model, posts, dtype="float16")
    # bf16 encoding leaves the model's float32 weights alone: float32 encoding is unchanged.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    np.testing.assert_array_equal(a, encode(model, posts, batch_size=4))
    # Batching and input order do not matter (sorted by length inside, order restored).
    shuffled = encode(model, posts[::-1], batch_size=3, dtype="bfloat16")[::-1]
    np.testing.assert_allclose(shuffled, b, atol=2e-2)


def test_compiled_encode_equals_eager_and_restores_the_model(backbone, ntu, monkeypatch):
    """compile=True (torch.compile, eager attention): the same embeddings in float32, every
    batch shape served, and the model's attention and forward as they were afterwards."""
    import importlib
    import shutil

    from ntulm.errors import ConfigError

    encode_mod = importlib.import_module("ntulm.lm.encode")  # the module, not ntulm.lm.encode()

    model = _model(backbone, ntu)
    posts = _posts(9)
    attn = model.base.config._attn_implementation
    ref = encode_mod.encode(model, posts, batch_size=4)
    got = encode_mod.encode(model, posts, batch_size=4, compile=True)  # 3 batch shapes
    np.testing.assert_allclose(got, ref, atol=1e-4)
    again = encode_mod.encode(model, posts[::-1], batch_size=3, compile=True)[::-1]
    np.testing.assert_allclose(again, ref, atol=1e-4)  # other shapes: the same compiled graph
    assert model.base.config._attn_implementation == attn
    assert "forward" not in vars(model.base.encoder)  # the class's forward again
    np.testing.assert_array_equal(encode_mod.encode(model, posts, batch_size=4), ref)
    assert "_compiled_encoder" not in model.state_dict()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        encode_mod.encode(model, posts, compile=True)
    torch._dynamo.reset()  # drop the compiled graphs (and their fake tensors) for later tests


def test_pad_batch_equals_pad():
    from ntulm.lm.encode import pad_batch

    tokens = [np.arange(n, dtype=np.int32) + 5 for n in (3, 7, 1, 4)]
    idx = np.array([2, 0, 1])
    ids, mask = pad_batch(tokens, idx, 0)
    ref_ids, ref_mask = pad([tokens[i] for i in idx], 0)
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)


def test_embed_to_parquet_bfloat16_matches_encode(backbone, ntu, tmp_path):
    from ntulm.lm.encode import embed_to_parquet

    model = _model(backbone, ntu)
    posts = _posts(11)
    n = embed_to_parquet(
        model, [(p, "x") for p in posts], tmp_path / "e.parquet", chunk_posts=4, dtype="bfloat16"
    )
    table = pq.read_table(tmp_path / "e.parquet")
    assert n == 11 and table["id"].to_pylist() == [p.id for p in posts]
    got = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    # chunks of 4 sort and pad differently from one call; bf16 rounding differs only slightly
    np.testing.assert_allclose(got, encode(model, posts, dtype="bfloat16"), atol=2e-2)


def test_mean_plus_ntu_pooling_splits_the_paper_mean(backbone, ntu, tmp_path):
    from ntulm.errors import ConfigError
    from ntulm.lm.data import tokenize
    from ntulm.lm.encode import encode, output_dim

    model = _model(backbone, ntu)
    posts = _posts(7)
    paper = encode(model, posts, batch_size=3, concat_ntu=False)
    both = encode(model, posts, batch_size=3, pooling="mean+ntu")
    h = model.hidden_size
    assert both.shape == (7, 2 * h) == (7, output_dim(model, "mean+ntu"))
    words, slot = both[:, :h], both[:, h:]
    # the paper's mean over n word pieces and the NTU token = (n * word mean + z_ntu) / (n + 1)
    n = np.array(
        [
            len(t)
            for t in tokenize(
                [p.text for p in posts], model.tokenizer, model.cfg.max_length, model.cfg.text
            )
        ]
    )[:, None]
    np.testing.assert_allclose(paper, (n * words + slot) / (n + 1), rtol=1e-4, atol=1e-5)
    assert not np.allclose(slot, words, atol=1e-3)
    with pytest.raises(ConfigError, match="pooling: 'max' is not one of mean, mean\\+ntu"):
        encode(model, posts, pooling="max")
    finetune(_posts(), _cfg(backbone, use_ntu=False), tmp_path / "bert", ntu=ntu)
    with pytest.raises(ConfigError, match="needs a model with the NTU token"):
        encode(NTULM.load(tmp_path / "bert"), posts, pooling="mean+ntu")


def test_cli_embed_shards_union_equals_single_process(backbone, ntu, tmp_path, capsys):
    from ntulm.errors import ArtifactError
    from ntulm.lm.shards import read_embeddings

    posts = _write_posts(tmp_path / "posts.jsonl", n=30)
    _model(backbone, ntu).save(tmp_path / "m")
    base = ["-q", "embed", "--model", str(tmp_path / "m"), "--posts", str(posts)]
    assert main([*base, "--out", str(tmp_path / "one.parquet")]) == 0
    one = pq.read_table(tmp_path / "one.parquet").sort_by("id")
    assert main([*base, "--out", str(tmp_path / "two"), "--nproc", "2"]) == 0  # 2 processes
    for i in (0, 1):  # three shards run one by one, as a scheduler would; the last one missing
        assert main([*base, "--out", str(tmp_path / "three"), "--shard", f"{i}/3"]) == 0
    with pytest.raises(ArtifactError, match="part-00002-of-00003"):
        read_embeddings(tmp_path / "three")
    assert main([*base, "--out", str(tmp_path / "three"), "--shard", "2/3"]) == 0
    for name, n in (("two", 2), ("three", 3)):
        parts = sorted((tmp_path / name).glob("part-*.parquet"))
        ids = [pq.read_table(p)["id"].to_pylist() for p in parts]
        assert len(parts) == n and all(ids) and sum(map(len, ids)) == len(set().union(*ids)) == 30
        got = read_embeddings(tmp_path / name).sort_by("id")
        assert got["id"].equals(one["id"]) and got["overlap"].equals(one["overlap"])
        np.testing.assert_allclose(  # batches pad differently per shard: float rounding only
            np.asarray(got["embedding"].to_pylist()),
            np.asarray(one["embedding"].to_pylist()),
            atol=1e-5,
        )
    assert "30 post embeddings in 2 shard(s)" in capsys.readouterr().out
    # --limit with shards: the first 10 posts, split between them
    for i in (0, 1):
        argv = [*base, "--out", str(tmp_path / "lim"), "--shard", f"{i}/2", "--limit", "10"]
        assert main(argv) == 0
    got = read_embeddings(tmp_path / "lim")["id"].to_pylist()
    assert sorted(got) == sorted(p.id for p in _posts(30)[:10])


def test_backbone_dropout_sets_hidden_and_attention_dropout(backbone):
    """``backbone_dropout=0`` (the DDP comparison on IRA) switches the backbone's dropout off;
    unset, the backbone keeps its own and the dumped config (fingerprints, caches) is unchanged."""
    own, _ = NTULM.from_backbone(LMConfig.build({"backbone": backbone}), 8)
    off, _ = NTULM.from_backbone(LMConfig.build({"backbone": backbone, "backbone_dropout": 0}), 8)
    assert own.mlm.config.hidden_dropout_prob == own.mlm.config.attention_probs_dropout_prob == 0.1
    assert off.mlm.config.hidden_dropout_prob == off.mlm.config.attention_probs_dropout_prob == 0.0
    drops = [m.p for m in off.mlm.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and set(drops) == {0.0}
    assert "backbone_dropout" not in LMConfig.build({"backbone": backbone}).model_dump()
    assert (
        LMConfig.build({"backbone": backbone, "backbone_dropout": 0}).model_dump()[
            "backbone_dropout"
        ]
        == 0
    )


def test_eval_every_records_the_curve_and_leaves_training_alone(backbone, ntu, tmp_path):
    # 40 posts, 2 held out, 38 train in batches of 8: 5 steps an epoch, 10 in two epochs.
    base = {"max_epochs": 2, "patience": 5, "train_dtype": "float32"}
    plain = finetune(_posts(), _cfg(backbone, **base), tmp_path / "plain", ntu=ntu)
    res = finetune(_posts(), _cfg(backbone, eval_every=3, **base), tmp_path / "curve", ntu=ntu)
    steps = [int(s) for s, _, _ in res.eval_curve]
    assert steps == [0, 3, 5, 6, 9, 10]  # start, every 3 steps, each epoch's end (no repeats)
    tokens = [t for _, t, _ in res.eval_curve]
    assert tokens == sorted(tokens) and tokens[-1] == res.train_tokens > 0
    by_step = {int(s): b for s, _, b in res.eval_curve}
    assert by_step[0] == res.initial_eval_bits
    assert [by_step[5], by_step[10]] == res.eval_bits
    # the extra scoring changes nothing in training: same per-epoch bits and weights
    assert res.eval_bits == pytest.approx(plain.eval_bits, abs=1e-6)
    assert res.train_loss == pytest.approx(plain.train_loss, abs=1e-6)
    posts = _posts(8)
    np.testing.assert_allclose(
        NTULM.load(tmp_path / "plain").encode(posts),
        NTULM.load(tmp_path / "curve").encode(posts),
        atol=1e-6,
    )
    saved = json.loads((tmp_path / "curve" / "train_result.json").read_text())
    assert saved["eval_curve"] == res.eval_curve
    assert "eval_every" not in LMConfig().model_dump()  # default: fingerprints unchanged


def test_tokenize_calls_rust_and_equals_the_transformers_call(tokenizer):
    """The fast path (a private Rust tokenizer, encode_batch_fast) gives the transformers call's
    ids, truncation included; a tokenizer without a Rust backend goes through __call__."""
    from ntulm.lm.config import TextNormConfig
    from ntulm.lm.data import rust_tokenizer, tokenize
    from ntulm.lm.text import normalize_text

    norm = TextNormConfig()
    texts = TEXTS + ["über Straße 日本語 😀 &amp; @bob https://t.co/x " * 30, "", "ｆｕｌｌ ＃x"]
    clean = [normalize_text(t, norm) for t in texts]
    for max_length in (8, 16, 512):
        assert rust_tokenizer(tokenizer, max_length) is not None  # the fast path runs
        got = tokenize(texts, tokenizer, max_length, norm)
        ref = tokenizer(clean, truncation=True, max_length=max_length, add_special_tokens=True)
        assert [t.tolist() for t in got] == ref["input_ids"]
        assert all(t.dtype == np.int32 for t in got)
    assert max(len(t) for t in tokenize(texts, tokenizer, 8, norm)) == 8
    # the transformers wrapper's own truncation state is untouched by the private copy
    assert tokenizer(texts[-3:])["input_ids"] == tokenizer(texts[-3:])["input_ids"]
    assert len(tokenizer(texts[-3])["input_ids"]) > 100

    class Plain:  # no backend_tokenizer: the transformers-style call
        def __call__(self, batch, **kw):
            return {"input_ids": [[101, len(t), 102] for t in batch]}

    assert rust_tokenizer(Plain(), 8) is None
    assert [t.tolist() for t in tokenize(["ab", "abc"], Plain(), 8, norm)] == [
        [101, 2, 102],
        [101, 3, 102],
    ]


def test_embed_to_parquet_prefetch_is_exact_and_stops_cleanly(backbone, ntu, tmp_path):
    """The prefetching thread changes nothing: float32 embeddings bit-identical to the serial
    path, --limit kept; an error while reading reaches the caller and leaves no output file."""
    from ntulm.errors import InputError
    from ntulm.lm.encode import embed_to_parquet

    model = _model(backbone, ntu)
    posts = [(p, "x") for p in _posts(23)]
    tables = {}
    for prefetch in (True, False):
        out = tmp_path / f"e-{prefetch}.parquet"
        n = embed_to_parquet(model, posts, out, chunk_posts=5, limit=17, prefetch=prefetch)
        assert n == 17
        tables[prefetch] = pq.read_table(out)
    assert tables[True].equals(tables[False])
    assert tables[True]["id"].to_pylist() == [p.id for p, _ in posts[:17]]

    def broken():
        yield from posts[:12]
        raise InputError("posts.jsonl", 13, "malformed JSON")

    with pytest.raises(InputError, match="posts.jsonl:13: malformed JSON"):
        embed_to_parquet(model, broken(), tmp_path / "bad.parquet", chunk_posts=5)
    assert not list(tmp_path.glob("bad*"))


def test_cli_embed_concat_scale_weighs_the_hashtag_block(backbone, ntu, tmp_path, capsys):
    """``--concat-scale hashtag=0.1`` with two per-type blocks: the hashtags' block times 0.1, as
    ``encode(concat_scale=...)``; a malformed weight is a usage error naming it."""
    posts = _write_posts(tmp_path / "posts.jsonl", n=12)
    model = _model(backbone, ntu)
    model.save(tmp_path / "m")
    base = ["-q", "embed", "--model", str(tmp_path / "m"), "--posts", str(posts)]
    both = ["--concat-ntu-types", "author,hashtag", "--concat-per-type"]
    out = tmp_path / "w.parquet"
    assert main([*base, *both, "--concat-scale", "hashtag=0.1", "--out", str(out)]) == 0
    got = np.asarray(pq.read_table(out)["embedding"].to_pylist(), dtype=np.float32)
    want = encode(
        NTULM.load(tmp_path / "m"), _posts(12), concat_types=["author", "hashtag"],
        concat_per_type=True, concat_scale={"hashtag": 0.1},
    )  # fmt: skip
    np.testing.assert_allclose(got, want, atol=1e-6)
    hashtags = ntu_vectors(_posts(12), ntu, ["hashtag"])[0]
    np.testing.assert_allclose(got[:, -ntu.dim :], 0.1 * hashtags, rtol=1e-6)
    for bad in ("=0.1", "hashtag", "hashtag=x"):
        with pytest.raises(SystemExit) as exc:
            main([*base, *both, "--concat-scale", bad, "--out", str(out)])
        assert exc.value.code == 2
        assert "expected TYPE=WEIGHT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, *both, "--concat-scale", "emoji=2", "--out", str(out)])
    assert "unknown NTU type" in capsys.readouterr().err
    assert main([*base, "--concat-scale", "hashtag=0.1", "--out", str(out)]) == 2
    assert "concat_scale: needs concat_types" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--batch-size", "0", "--out", str(out)])
    assert "argument --batch-size: 0: needs at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--limit", "-1", "--out", str(out)])
    assert "argument --limit: -1: needs at least 0" in capsys.readouterr().err
    assert main([*base, "--limit", "5", "--out", str(out)]) == 0  # the first 5 posts
    capsys.readouterr()
    assert pq.read_table(out)["id"].to_pylist() == [p.id for p in _posts(12)[:5]]
