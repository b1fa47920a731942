"""The Python API as a new user calls it: ``encode`` over dicts of the JSON Lines schema and
``Post`` with a plain handle as author, exactly as the files give them (issue 9)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ntulm.kge import NTUEmbeddings
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
def ntu() -> NTUEmbeddings:
    rng = np.random.default_rng(0)
    return NTUEmbeddings(
        tables={
            "user": rng.normal(size=(3, 8)).astype(np.float32),
            "hashtag": rng.normal(size=(2, 8)).astype(np.float32),
        },
        keys={"user": ["id:1", "id:2", "@carol"], "hashtag": ["maga", "news"]},
        relations={},
        user_handles=["alice", "bob", None],
        config={},
    )


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
