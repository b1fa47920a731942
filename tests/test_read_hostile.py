"""Hostile records: a wrong type anywhere, deep nesting, lone surrogates, huge numbers. Each is one
rejected, quarantined record in every JSON format and layout; the good records around it are kept,
the posts table is written, and the fast and reference readers agree."""

import copy
import json

import pyarrow.parquet as pq
import pytest

from ntulm.posts.readers import PostReader
from ntulm.posts.table import write_posts_table

V1 = {
    "id": 10,
    "id_str": "10",
    "created_at": "Wed Oct 10 20:19:24 +0000 2018",
    "lang": "en",
    "text": "RT @a: short #x",
    "user": {"id": 1, "id_str": "1", "screen_name": "Me"},
    "entities": {
        "hashtags": [{"text": "x"}],
        "user_mentions": [{"id_str": "2", "screen_name": "b"}],
        "urls": [{"url": "https://t.co/u", "expanded_url": "https://ex.org/a"}],
        "media": [{"type": "photo", "id_str": "5"}],
    },
    "extended_tweet": {"full_text": "full #x @b", "entities": {"hashtags": [{"text": "y"}]}},
    "in_reply_to_status_id_str": "9",
    "in_reply_to_user_id_str": "2",
    "in_reply_to_screen_name": "b",
    "retweeted_status": {"id_str": "8", "text": "orig #z", "user": {"id_str": "3"}},
}
V2_TWEET = {
    "id": "20",
    "text": "hi #x @b https://t.co/u",
    "author_id": "1",
    "created_at": "2020-01-01T00:00:00.000Z",
    "lang": "en",
    "referenced_tweets": [{"type": "retweeted", "id": "21"}, {"type": "replied_to", "id": "22"}],
    "in_reply_to_user_id": "2",
    "entities": {
        "hashtags": [{"tag": "x"}],
        "mentions": [{"id": "2", "username": "b"}],
        "urls": [{"url": "https://t.co/u", "expanded_url": "https://ex.org/a"}],
    },
    "attachments": {"media_keys": ["3_1"]},
    "note_tweet": {"text": "long #x", "entities": {"hashtags": [{"tag": "x"}]}},
}
V2_PAGE = {
    "data": [V2_TWEET],
    "includes": {
        "users": [{"id": "1", "username": "Me"}],
        "tweets": [{"id": "21", "text": "orig #z", "author_id": "3"}],
        "media": [{"media_key": "3_1", "type": "photo"}],
    },
}
JSONL = {
    "id": "30",
    "text": "mine #x",
    "author": {"id": "1", "handle": "me"},
    "created_at": "2020-01-01",
    "hashtags": ["x"],
    "mentions": ["b", {"id": "2"}],
    "urls": ["https://ex.org"],
    "media": ["photo:1"],
    "favorited_by": ["c"],
    "retweeted_by": [4],
    "replied_by": ["id:5"],
    "is_retweet": True,
    "retweet_of_id": "29",
    "retweet_of_author": "d",
    "reply_to_id": 28,
    "reply_to_user": "e",
    "lang": "en",
    "labels": {"topic": "x", "n": 3},
}
DEEP = json.loads("[" * 900 + "]" * 900)  # dumps fine, deeper than the reader's parser allows
HOSTILE = [5, 1.5, True, None, "x", "", [], {}, [5], ["x"], [{}], {"a": 1}, "lone \ud800", DEEP]
HUGE_INT = 10**5000  # more digits than Python's int parser takes by default


def _paths(obj, prefix=()):
    """Every key and list index inside ``obj``."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        yield (*prefix, k)
        if isinstance(v, (dict, list)):
            yield from _paths(v, (*prefix, k))


def _mutants(record):
    for path in _paths(record):
        for value in HOSTILE:
            m = copy.deepcopy(record)
            target = m
            for k in path[:-1]:
                target = target[k]
            target[path[-1]] = value
            yield m


def _dump(obj) -> bytes:
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)  # json.dumps is recursive too
    old_digits = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(obj).encode()
    finally:
        sys.setrecursionlimit(old)
        sys.set_int_max_str_digits(old_digits)


def _read_table(path, engine, tmp_path):
    q = tmp_path / f"q-{engine}.jsonl"
    reader = PostReader(engine=engine, quarantine_path=q, duplicates="keep-all")  # ids repeat
    rep = write_posts_table(reader, [path], tmp_path / f"t-{engine}", progress=False, workers=1)
    table = pq.read_table(tmp_path / f"t-{engine}")
    return table, rep, q.read_text() if q.exists() else ""


@pytest.mark.parametrize("record", [V1, V2_PAGE, V2_TWEET, JSONL], ids=["v1", "v2", "v2t", "jl"])
def test_any_wrong_type_is_one_rejection_never_a_crash(record, tmp_path):
    mutants = [*_mutants(record), {**record, "id": HUGE_INT}, {**record, "deep": DEEP}]
    good = _dump(record)
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(x for m in mutants for x in (good, _dump(m))) + b"\n")
    n_posts = 1 if record is not V2_PAGE else len(V2_PAGE["data"])
    out = {e: _read_table(path, e, tmp_path) for e in ("fast", "python")}
    table, rep, quarantine = out["python"]
    assert rep.read == rep.accepted + rep.rejected
    # a lone surrogate or deep nesting anywhere in a line rejects it; wrong types where read, too
    always = [m for m in mutants if b"\\ud800" in _dump(m) or b"[[[[" in _dump(m)]
    assert rep.rejected > len(always) + 20, rep.reasons
    assert not [k for k in rep.reasons if "unreadable record" in k]  # no parser fell over
    assert table.num_rows == rep.accepted >= len(mutants) * n_posts  # every good record kept
    for line in quarantine.splitlines():
        assert json.loads(line)["raw"]  # what was rejected can be recovered
    fast = out["fast"]
    assert fast[1].to_json() == rep.to_json() and fast[2] == quarantine
    assert fast[0].to_pylist() == table.to_pylist()


@pytest.mark.parametrize("layout", ["array", "document"])
def test_hostile_values_in_arrays_and_documents(layout, tmp_path):
    lone = {
        **V2_TWEET,
        "id": "24",
        "text": "lone \ud800",
        "note_tweet": None,
        "referenced_tweets": [],
    }
    tweets = [V2_TWEET, {**V2_TWEET, "id": []}, lone, {**V2_TWEET, "lang": DEEP}, V2_TWEET]
    data = tweets if layout == "array" else {**V2_PAGE, "data": tweets}
    path = tmp_path / "x.json"
    path.write_bytes(_dump(data))
    table, rep, quarantine = _read_table(path, "python", tmp_path)
    assert rep.files[str(path)] == "twitter_v2"
    problems = [json.loads(x)["problem"] for x in quarantine.splitlines()]
    assert "field 'id' must be a string or integer id, got array" in problems
    if layout == "document":  # json: the lone surrogate reaches the reader, which rejects it
        assert "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)" in problems
        assert (rep.accepted, rep.rejected) == (2, 3) and table.num_rows == 2
    else:  # ijson's C parser turns it into "?" itself
        assert table.column("text").to_pylist()[1] == "lone ?"
        assert (rep.accepted, rep.rejected) == (3, 2) and table.num_rows == 3


def test_v2_page_with_one_bad_tweet_keeps_the_others(tmp_path):
    bad = {**V2_TWEET, "id": "99", "referenced_tweets": 5}
    page = {**V2_PAGE, "data": [V2_TWEET, bad, {**V2_TWEET, "id": "23"}]}
    for layout, text in (("lines", json.dumps(page)), ("document", json.dumps(page, indent=2))):
        path = tmp_path / f"{layout}.json"
        path.write_text(text + "\n")
        q = tmp_path / f"q-{layout}.jsonl"
        reader = PostReader(quarantine_path=q)
        posts = [p for p, _ in reader.iter_posts([path])]
        assert [p.id for p in posts] == ["20", "23"], layout
        assert reader.report.read == 3 and reader.report.rejected == 1
        (rec,) = [json.loads(x) for x in q.read_text().splitlines()]
        assert rec["problem"] == "field 'referenced_tweets' must be a list, got int"
        assert json.loads(rec["raw"]) == bad  # the tweet itself, recoverable


@pytest.mark.parametrize(
    ("page", "problem"),
    [
        ({**V2_PAGE, "includes": []}, "field 'includes' must be an object, got array"),
        ({"data": "x"}, "field 'data' must be a tweet object or a list of them, got str"),
        (
            {**V2_PAGE, "includes": {"users": [{"id": 1.5}]}},
            "field 'includes.users[].id' must be a string or integer id, got float",
        ),
    ],
)
def test_v2_unusable_page_is_one_rejection(page, problem, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(page) + "\n" + json.dumps(V2_PAGE) + "\n")
    reader = PostReader(quarantine_path=tmp_path / "q.jsonl")
    assert [p.id for p, _ in reader.iter_posts([path])] == ["20"]
    rec = json.loads((tmp_path / "q.jsonl").read_text())
    assert rec["problem"] == problem and json.loads(rec["raw"]) == page


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("is_retweet", "no", "field 'is_retweet' must be true or false: got 'no'"),
        ("is_retweet", 1, "field 'is_retweet' must be true or false: got 1"),
        ("author", {"id": "1", "handle": 7}, "field 'author.handle' must be a string"),
    ],
)
def test_project_schema_rejects_non_booleans_and_ill_typed_users(field, value, problem, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({**JSONL, field: value}) + "\n")
    reader = PostReader(quarantine_path=tmp_path / "q.jsonl")
    assert list(reader.iter_posts([path])) == []
    assert json.loads((tmp_path / "q.jsonl").read_text())["problem"] == problem


def test_malformed_json_message_has_no_doubled_word(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "text": "unterminated\n' + json.dumps(JSONL) + "\n")
    reader = PostReader(quarantine_path=tmp_path / "q.jsonl")
    assert len(list(reader.iter_posts([path]))) == 1
    problem = json.loads((tmp_path / "q.jsonl").read_text())["problem"]
    assert problem == "malformed JSON: Unterminated string starting at column 19"


# --- damaged and binary files -------------------------------------------------------------------

IRA_HEADER = (
    b"external_author_id,author,content,region,language,publish_date,harvested_date,following,"
    b"followers,updates,post_type,account_type,retweet,account_category,new_june_2018\n"
)


def _damaged_files(d, n, seed):
    """``n`` files: random bytes, random bytes behind a gzip header, truncated gzip, good files
    with bytes overwritten (plain and gzipped) or inserted; of every format and layout."""
    import gzip
    import random

    from ntulm.synthetic import v1_tweets

    rng = random.Random(seed)
    ira = IRA_HEADER + b"".join(
        b'906000000000000000,bob%d,"hi #x @y",U,English,2017-01-01 00:00:00,x,0,0,1,,R,0,'
        b"RightTroll,0\n" % i
        for i in range(20)
    )
    bases = [
        b"\n".join(json.dumps(t).encode() for t in v1_tweets(n_posts=20, seed=1)),
        ira,
        b"\n".join(_dump({**JSONL, "id": i}) for i in range(20)),
        _dump([V2_TWEET] * 5),
        json.dumps(V2_PAGE, indent=2).encode(),
    ]
    for i in range(n):
        base = bases[i % len(bases)]
        kind = i % 6
        if kind == 0:
            data = rng.randbytes(rng.randint(0, 3000))
        elif kind == 1:
            data = b"\x1f\x8b" + rng.randbytes(rng.randint(0, 3000))
        elif kind == 2:
            packed = gzip.compress(base)
            data = packed[: rng.randint(0, len(packed))]
        elif kind in (3, 4):
            b = bytearray(base if kind == 3 else gzip.compress(base))
            for _ in range(rng.randint(1, 10)):
                b[rng.randrange(10, len(b))] = rng.randrange(256)
            data = bytes(b)
        else:
            cut = rng.randrange(len(base))
            data = base[:cut] + rng.randbytes(rng.randint(1, 50)) + base[cut:]
        (d / f"f{i:03d}.bin").write_bytes(data)


def test_damaged_and_binary_files_are_skipped_or_their_bad_lines_rejected(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    _damaged_files(d, 60, seed=0)
    out = {e: _read_table(d, e, tmp_path) for e in ("python", "fast")}
    table, rep, quarantine = out["python"]
    assert rep.read == rep.accepted + rep.rejected
    assert len(rep.files) + len(rep.files_skipped) == 60
    assert rep.accepted > 100 and rep.rejected > 10 and len(rep.files_skipped) > 10
    assert any("truncated or corrupt gzip" in why for why in rep.files_skipped.values())
    assert not [k for k in rep.reasons if "unreadable record" in k]
    fast = out["fast"]
    assert fast[1].to_json() == rep.to_json() and fast[2] == quarantine
    assert fast[0].to_pylist() == table.to_pylist()


# --- format detection ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_bad_or_long_first_line_loses_only_that_line(gz, tmp_path, lines):
    long_first = {**JSONL, "text": "long #x " + "y" * 100_000}
    cases = {
        "bad_first": ["{broken", *[{**JSONL, "id": i} for i in range(3)]],
        "blank_and_bad": [
            "",
            "not json at all",
            "{}",
            *[{**V1, "id_str": str(i)} for i in range(3)],
        ],
        "long_first": [long_first, *[{**JSONL, "id": i} for i in range(3)]],
        "bad_then_v2": ["[1, 2", V2_PAGE],
    }
    for name, recs in cases.items():
        path = lines(f"{name}.jsonl", recs, gz=gz)
        reader = PostReader(quarantine_path=tmp_path / "q.jsonl", max_text_chars=200_000)
        posts = list(reader.iter_posts([path]))
        assert reader.report.files_skipped == {}, name
        n_bad = sum(1 for r in recs if isinstance(r, str) and r)
        assert (len(posts), reader.report.rejected) == (len(recs) - n_bad - ("" in recs), n_bad)


def test_pretty_printed_document_still_a_document(tmp_path):
    page = {**V2_PAGE, "data": [V2_TWEET, {**V2_TWEET, "id": "25"}]}
    path = tmp_path / "page.json"
    # objects on lines of their own: a line inside would parse, the file is one document
    path.write_text('{"data": [\n' + ",\n".join(json.dumps(t) for t in page["data"]) + "\n],\n"
                    f'"includes": {json.dumps(V2_PAGE["includes"])}}}\n')  # fmt: skip
    reader = PostReader()
    assert [p.id for p, _ in reader.iter_posts([path])] == ["20", "25"]
    assert reader.report.rejected == 0


# --- directory walking --------------------------------------------------------------------------


def test_links_fifos_and_unreadable_files_are_skipped_and_listed(tmp_path, monkeypatch):
    import os
    import signal

    import ntulm.posts.readers as readers

    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "good.jsonl").write_text(json.dumps(JSONL) + "\n")
    (d / "sub" / "more.jsonl").write_text(json.dumps({**JSONL, "id": "31"}) + "\n")
    (d / "secret.jsonl").write_text(json.dumps(JSONL) + "\n")
    (d / "dangling.jsonl").symlink_to(tmp_path / "nowhere")
    (d / "loop1").symlink_to(d / "loop2")
    (d / "loop2").symlink_to(d / "loop1")
    (d / "sub" / "up").symlink_to(d)  # a directory loop
    (d / "linked").symlink_to(d / "sub")  # a linked directory is read, once
    os.mkfifo(d / "pipe.jsonl")  # opening it would block for ever
    real_access = os.access
    monkeypatch.setattr(
        readers.os, "access", lambda p, m: "secret" not in str(p) and real_access(p, m)
    )
    signal.alarm(120)  # a hang fails the test instead of the suite
    try:
        rep = write_posts_table(PostReader(), [d], tmp_path / "t", progress=False, workers=1)
    finally:
        signal.alarm(0)
    assert rep.accepted == 2 and list(rep.files) == [
        str(d / "good.jsonl"),
        str(d / "linked" / "more.jsonl"),
    ]
    assert rep.files_skipped == {
        str(d / "sub"): f"the same directory as {d / 'linked'} (read once)",
        str(d / "linked" / "up"): f"symlink loop (a link to {d}, a directory above it)",
        str(d / "dangling.jsonl"): f"dangling symlink (to {tmp_path / 'nowhere'})",
        str(d / "loop1"): "symlink loop",
        str(d / "loop2"): "symlink loop",
        str(d / "pipe.jsonl"): "not a regular file (FIFO)",
        str(d / "secret.jsonl"): "cannot read: permission denied",
    }


# --- writing posts back -------------------------------------------------------------------------


def test_to_json_round_trips_posts_of_every_reader(tmp_path, lines):
    import gzip

    import pyarrow as pa

    from ntulm.posts.rows import rows_to_posts
    from ntulm.synthetic import generate_posts, v1_tweets

    d = tmp_path / "in"
    d.mkdir()
    v1 = list(v1_tweets(n_posts=120, seed=5))
    (d / "v1.jsonl").write_text("\n".join(json.dumps(t) for t in v1) + "\n")
    media_only = {"id_str": "77", "text": "look @x https://t.co/abc", "user": {"id_str": "1"},
                  "entities": {"hashtags": [], "urls": [], "user_mentions": []}}  # fmt: skip
    (d / "v1_array.json").write_text(json.dumps([*v1[:20], V1, media_only]))
    (d / "v2.jsonl").write_text(json.dumps(V2_PAGE) + "\n" + json.dumps(V2_TWEET) + "\n")
    (d / "v2_page.json").write_text(json.dumps(V2_PAGE, indent=2))
    mine = list(generate_posts(n_posts=80, seed=2))
    mine += [JSONL, {"id": "h", "text": "no ntus given: #a @b www.c.org", "author": "id:x"}]
    (d / "mine.jsonl.gz").write_bytes(gzip.compress("\n".join(map(json.dumps, mine)).encode()))
    (d / "ira.csv").write_bytes(
        IRA_HEADER
        + b'906000000000000000,Bob,"RT @x: hi #Tag @y http://a.org/p &amp; more",U,English,'
        b"2017-01-01 00:00:00,x,0,0,1,RETWEET,R,1,RightTroll,0\n"
        b'1234,carol,"plain text, nothing here",U,Russian,2017-01-02 00:00:00,x,0,0,1,,R,0,,0\n'
    )
    for engine in ("fast", "python"):
        reader = PostReader(engine=engine)
        table = pa.concat_tables(reader.iter_tables([d]))
        assert len(reader.report.files) == 6
        posts = rows_to_posts(table)
        assert any(not p.urls and "http" in p.text for p in posts)  # would be re-extracted
        out = tmp_path / f"back-{engine}.jsonl"
        out.write_text("".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in posts))
        back = PostReader(engine=engine, format="jsonl")
        again = pa.concat_tables(back.iter_tables([out]))
        assert back.report.rejected == 0
        assert (
            again.drop_columns(["source"]).to_pylist() == table.drop_columns(["source"]).to_pylist()
        )


# --- duplicate ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_duplicate_ids_counted_first_kept_or_error(workers, tmp_path):
    from ntulm.errors import InputError

    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text(
        "".join(json.dumps({**JSONL, "id": i, "text": f"a{i}"}) + "\n" for i in (1, 2, 1))
    )
    (d / "b.jsonl").write_text(
        "".join(json.dumps({**JSONL, "id": i, "text": f"b{i}"}) + "\n" for i in (3, 2))
    )

    def read(policy, name):
        q = tmp_path / f"q-{name}.jsonl"
        reader = PostReader(quarantine_path=q, duplicates=policy)
        rep = write_posts_table(reader, [d], tmp_path / name, progress=False, workers=workers)
        return rep, pq.read_table(tmp_path / name), q

    rep, table, q = read("first", "first")
    assert table.column("text").to_pylist() == ["a1", "a2", "b3"]
    assert (rep.read, rep.accepted, rep.rejected, rep.duplicate_ids) == (5, 3, 2, 2)
    assert rep.to_json()["duplicate_ids"] == 2 and rep.reasons["duplicate post id"] == 2
    assert [json.loads(x)["problem"] for x in q.read_text().splitlines()] == [
        f"duplicate post id (first at {d / 'a.jsonl'}:1)",
        f"duplicate post id (first at {d / 'a.jsonl'}:2)",
    ]
    rep, table, _ = read("keep-all", "all")
    assert table.num_rows == 5 and rep.duplicate_ids == 2 and rep.rejected == 0
    with pytest.raises(
        InputError, match=r"a.jsonl:3: duplicate post id '1' \(first at .*a.jsonl:1\)"
    ):
        read("error", "error")
