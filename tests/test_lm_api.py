"""The Python API as a new user calls it: ``encode`` over dicts of the JSON Lines schema and
``Post`` with a plain handle as author, exactly as the files give them (issue 9)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ntulm.lm import NTULM, LMConfig
from ntulm.posts import Post, PostReader, UserRef

RECORDS = [
    {"id": "1", "text": "vote today #maga", "author": "alice"},
    {"id": "2", "text": "the cat sat on the mat", "author": "@Bob", "hashtags": ["News"]},
    {"id": "3", "text": "hello @carol", "author": {"id": "2"}},
    {"id": 4, "text": "nobody knows me #unknowntag", "author": "dave"},
    {"id": "5", "text": "no author here", "author": None},
]


@pytest.fixture(scope="module")
def model(backbone, ntu) -> NTULM:
    cfg = LMConfig.build({"backbone": backbone, "progress": False, "max_length": 16})
    torch.manual_seed(0)
    m, _ = NTULM.from_backbone(cfg, ntu.dim)
    m.ntu = ntu
    return m.eval()


def test_encode_takes_jsonl_dicts_exactly_as_the_file_reader(model, tmp_path):
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    read = [p for p, _ in PostReader().iter_posts([path])]
    assert len(read) == len(RECORDS)
    want, want_overlap = model.encode(read, return_overlap=True)
    got, overlap = model.encode(RECORDS, return_overlap=True)
    np.testing.assert_array_equal(got, want)
    # alice and bob are known by handle, id 2 by id, dave and the authorless post are not
    assert overlap.tolist() == want_overlap.tolist() == [True, True, True, False, False]
    # the module-level verb and a mixed list (Post, dict, text) agree with the method
    from ntulm.lm import encode

    mixed = [read[0], RECORDS[1], "just a text"]  # other batches: equal up to rounding
    np.testing.assert_allclose(encode(model, mixed)[:2], want[:2], rtol=1e-5, atol=1e-6)


def test_post_takes_users_as_the_files_give_them(model):
    p = Post(id="1", text="vote today #maga", author="alice", mentions=["@Bob", 7, "id:9"])
    assert p.author == UserRef(handle="alice")
    assert p.mentions == [UserRef(handle="bob"), UserRef(id="7"), UserRef(id="9")]
    assert Post(id="2", text="x", author={"id": 5, "screen_name": "Eve"}).author == UserRef(
        id="5", handle="eve"
    )
    assert Post(id="3", text="x", author="id:12").author == UserRef(id="12")
    # a handle string finds the user's NTU vector, as UserRef(handle=...) does
    ref = Post(id="1", text="vote today", author=UserRef(handle="alice"))
    a, overlap = model.encode(
        [Post(id="1", text="vote today", author="alice")], return_overlap=True
    )
    np.testing.assert_array_equal(a, model.encode([ref]))
    assert overlap.tolist() == [True]
    with pytest.raises(ValueError, match="author"):
        Post(id="4", text="x", author=3.5)
    with pytest.raises(ValueError, match=r"mentions\[1\]"):
        Post(id="4", text="x", mentions=["ok", ""])


def test_post_from_json_round_trips_to_json():
    p = Post.from_json({"id": "1", "text": "hi #NLP", "author": "Alice"})
    assert p.author == UserRef(handle="alice") and p.hashtags == ["nlp"]
    assert Post.from_json(p.to_json()) == p


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"id": "1", "text": "no author key"}, r"posts\[1\]: missing required field 'author'"),
        ({"id": "1", "text": "x", "author": "a", "hashtag": []}, r"posts\[1\]: unknown field"),
        ({"id": "1", "text": 5, "author": "a"}, r"posts\[1\]: field 'text'"),
    ],
)
def test_encode_names_the_bad_dict_and_field(model, bad, needle):
    with pytest.raises(ValueError, match=needle):
        model.encode([RECORDS[0], bad])


def test_encode_refuses_a_single_post_instead_of_a_list(model):
    with pytest.raises(TypeError, match="list"):
        model.encode(RECORDS[0])


# ---------------------------------------------------------------------------- loading elsewhere
LONG = "breaking news about the election in ohio tonight and then some more words to truncate"
TEXTS = ["vote today #maga", "great rally with @Bob today http://t.co/xyz", LONG, "hello"]


def test_saved_model_directory_has_a_card_naming_every_file(model, tmp_path):
    model.save(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    for path in (tmp_path / "m").iterdir():  # every file the directory holds is explained
        assert f"`{path.name}" in card, path.name
    assert "without the NTU token" in card and "ntulm export" in card
    assert "AutoModel" in card and "SentenceTransformer" in card


def test_card_of_a_no_ntu_model_says_the_text_path_is_the_whole_model(backbone, tmp_path):
    cfg = LMConfig.build({"backbone": backbone, "use_ntu": False, "progress": False})
    m, _ = NTULM.from_backbone(cfg, None)
    m.save(tmp_path / "bert")
    card = (tmp_path / "bert" / "README.md").read_text()
    assert "no-NTU baseline" in card and "without the NTU token" not in card
    assert "ntu_projection" not in card


def test_export_sentence_transformers_gives_the_text_only_vectors(model, tmp_path, capfd):
    from sentence_transformers import SentenceTransformer

    from ntulm.cli import main
    from ntulm.lm import normalize_text

    model.save(tmp_path / "m")
    out = tmp_path / "st"
    capfd.readouterr()
    assert main(["-q", "export", "--model", str(tmp_path / "m"), "--out", str(out)]) == 0
    said = capfd.readouterr().out
    assert "TEXT PATH" in said and "no NTU token" in said
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    assert "text path only" in (out / "README.md").read_text()

    st = SentenceTransformer(str(out), device="cpu")
    assert "MISSING" not in capfd.readouterr().err  # no random pooler reported on load
    assert st.max_seq_length == model.cfg.max_length
    clean = [normalize_text(t, model.cfg.text) for t in TEXTS]
    got = st.encode(clean, convert_to_numpy=True)
    want = model.encode(TEXTS, text_only=True)  # ntulm normalises the raw texts itself
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # ... and that is not the NTULM embedding: the NTU token changes the vectors
    assert np.abs(model.encode(TEXTS, concat_ntu=False) - want).max() > 1e-3


def test_export_refuses_a_non_empty_out_and_a_non_model(model, tmp_path, capsys):
    from ntulm.cli import main

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    model.save(tmp_path / "m")
    assert main(["export", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "full")]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not an NTULM model directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------- what the logs show
@pytest.mark.parametrize("quiet", [True, False])
def test_cli_logs_have_no_bars_or_escape_codes_off_a_terminal(backbone, tmp_path, capfd, quiet):
    """stderr is not a terminal here: no progress bars (ours or transformers' loading and
    writing bars), so no carriage returns or cursor escape codes between the log lines."""
    from transformers.utils import logging as hf_logging

    from ntulm.cli import main

    posts = tmp_path / "posts.jsonl"
    rows = [
        {"id": str(i), "text": f"post number {i} #tag{i % 3}", "author": f"u{i % 4}"}
        for i in range(24)
    ]
    posts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["finetune", "--posts", str(posts), "--no-ntu", "--out", str(tmp_path / "m"),
            f"backbone={backbone}", "max_steps=2", "max_epochs=1", "max_length=16"]  # fmt: skip
    capfd.readouterr()
    assert main((["-q"] if quiet else []) + argv) == 0
    err = capfd.readouterr().err
    for needle in ("\r", "\x1b", "Writing model shards", "Loading weights", "it/s", "step/s"):
        assert needle not in err, (needle, err[-500:])
    assert hf_logging.is_progress_bar_enabled()  # the library's switch is restored afterwards
