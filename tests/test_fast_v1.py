"""The fast Twitter v1.1 reader equals the Python reference: same posts table, counts, quarantine."""

import gzip
import json

import pyarrow as pa
import pytest

from ntulm.errors import InputError
from ntulm.posts.fast_v1 import _read_range, v1_tables
from ntulm.posts.readers import PostReader, Quarantine
from ntulm.synthetic import v1_tweets


def _user(uid, handle, **extra):
    return {"id": uid, "id_str": str(uid), "screen_name": handle, "name": handle, **extra}


DROP = object()  # leave the key out


def _tweet(i, t, **extra):
    tweet = {
        "created_at": "Wed Oct 10 20:19:24 +0000 2018", "id": 1000 + i, "id_str": str(1000 + i),
        "text": t, "user": _user(i % 3 + 1, f"User{i % 3}"), "lang": "en",
        "entities": {"hashtags": [], "symbols": [], "user_mentions": [], "urls": []}, **extra,
    }  # fmt: skip
    return {k: v for k, v in tweet.items() if v is not DROP}


def _line(obj) -> bytes:
    return json.dumps(obj).encode()


def _hostile() -> list[bytes]:
    ents = {
        "hashtags": [{"text": "Über", "indices": [0, 5]}, {"text": "ＦＵＬＬ"}, {"text": ""}],
        "symbols": [],
        "user_mentions": [_user(7, "Bob"), {"screen_name": "@Carol"}, _user(7, "Bob")],
        "urls": [{"url": "https://t.co/x", "expanded_url": "https://www.Example.com/a"},
                 {"url": "https://t.co/y", "expanded_url": None}, {"url": None}],
        "media": [{"type": "photo", "id_str": "55"}, {"id": 56}],
    }  # fmt: skip
    rt = _tweet(50, "orig #a", user=_user(9, "Orig"), entities=None)
    rt["extended_tweet"] = {"full_text": "the original &amp; long #Long @Dan", "entities": {}}
    objs = [
        _tweet(1, "plain #x", entities=ents),
        _tweet(
            2,
            "short…",
            truncated=True,
            extended_tweet={
                "full_text": "long &lt;3 #日本 @eve",
                "entities": ents,
                "extended_entities": {"media": [{"type": "video", "id": 9}]},
            },
        ),
        _tweet(3, "RT @Orig: orig", retweeted_status=rt),
        _tweet(4, "quoting", is_quote_status=True, quoted_status=_tweet(5, "q #quoted")),
        _tweet(
            6,
            "@Bob reply",
            in_reply_to_status_id=1001,
            in_reply_to_status_id_str="1001",
            in_reply_to_user_id=7,
            in_reply_to_user_id_str="7",
            in_reply_to_screen_name="Bob",
        ),
        _tweet(7, "reply to handle only", in_reply_to_screen_name="Zed"),
        _tweet(8, "trimmed user", user={"id": 42}),
        _tweet(9, "no entities #NoEnt @someone https://x.org/p", entities=None),
        _tweet(10, "empty entities #here", entities={}),
        _tweet(11, "full_text form", text=None, full_text="Full #Text"),
        _tweet(12, "odd time", created_at="Wed Feb 30 20:19:24 +0000 2018"),
        _tweet(13, "other time", created_at="2018-10-10T20:19:24Z"),
        _tweet(14, "lower time", created_at="wed oct 10 20:19:24 +0000 2018"),
        _tweet(15, "unknown entity key", entities={"hashtags": [{"text": "k"}], "extra": 1}),
        _tweet(16, "id as string", id=" 77 ", id_str=DROP),
        _tweet(17, "media null", entities={**ents, "media": None}),
        # hostile: the reference decides each of these
        _tweet(20, "number as hashtag text", entities={"hashtags": [{"text": 5}]}),
        _tweet(21, "hashtags not a list", entities={"hashtags": "x"}),
        _tweet(22, "hashtags null", entities={"hashtags": None}),
        _tweet(23, "hashtag item a string", entities={"hashtags": ["x"]}),
        _tweet(24, "url a number", entities={"urls": [{"expanded_url": 5}]}),
        _tweet(25, "float id", id=1.5, id_str=DROP),
        _tweet(26, "bool id", id=True, id_str=DROP),
        _tweet(27, "no user", user=DROP),
        _tweet(28, "user null", user=None),
        _tweet(29, "user without id or name", user={"name": "x"}),
        _tweet(30, "   "),
        _tweet(31, "x" * 300),
        _tweet(32, "text a number", text=5),
        _tweet(33, "entities a list", entities=[1]),
        _tweet(34, "ext entities a list", extended_entities=[1]),
        _tweet(35, "reply handle a number", in_reply_to_screen_name=5),
        _tweet(36, "rt without id", retweeted_status={"text": "x", "user": _user(1, "a")}),
        _tweet(37, "big id", id=10**30, id_str=DROP),
        _tweet(38, "lang a number", lang=5),
        # hashtags repeated in other case and compatibility forms (one after NFKC + casefold)
        _tweet(
            40,
            "forms",
            entities={
                "hashtags": [
                    {"text": t}
                    for t in (
                        "Über",
                        "über",
                        "ÜBER",
                        "Ｆｕｌｌ",
                        "full",
                        "Straße",
                        "STRASSE",
                        "ﬁne",
                        "fine",
                        "#X",
                    )
                ]
            },
        ),
        _tweet(41, "forms again", entities={"hashtags": [{"text": "ÜBER"}, {"text": "Ｆｕｌｌ"}]}),
        # odd times: leap days, out-of-range fields, other offsets, short or odd forms
        _tweet(42, "t", created_at="Mon Feb 29 20:19:24 +0000 2016"),
        _tweet(43, "t", created_at="Thu Feb 29 20:19:24 +0000 2018"),
        _tweet(44, "t", created_at="Wed Oct 10 24:00:00 +0000 2018"),
        _tweet(45, "t", created_at="Wed Oct 10 23:59:60 +0000 2018"),
        _tweet(46, "t", created_at="Wed Oct 10 20:19:24 +0100 2018"),
        _tweet(47, "t", created_at="Wed Oct 1 20:19:24 +0000 2018"),
        _tweet(48, "t", created_at="Wed Oct 10 20:19:24 +0000 0000"),
        _tweet(49, "t", created_at="Xyz Oct 10 20:19:24 +0000 2018"),
        _tweet(60, "t", created_at="Sun Oct 10 20:19:24 +0000 2018"),  # wrong weekday
        _tweet(61, "t", created_at="Wed Oct \u0661\u0660 20:19:24 +0000 2018"),
        _tweet(62, "t", created_at="Wed Oct 10 20:19:24 +0000 2018 "),
        _tweet(63, "t", created_at=""),
        _tweet(64, "t", created_at=None),
        _tweet(65, "t", created_at=DROP),
        # entities edge cases: only polls or symbols, null lists, empty extended ones
        _tweet(66, "polls only #p", entities={"polls": []}),
        _tweet(67, "symbols null #s", entities={"symbols": None}),
        _tweet(
            68,
            "lists null #n",
            entities={"hashtags": None, "user_mentions": None, "urls": None, "media": None},
        ),
        _tweet(
            69,
            "ext {} #e",
            extended_entities={},
            extended_tweet={"full_text": "ext #full", "entities": {}, "extended_entities": {}},
        ),
        _tweet(70, "ext null", extended_tweet=None, entities={"hashtags": [{"text": "Y"}]}),
        _tweet(
            71,
            "ext media wins",
            entities={"media": [{"type": "photo", "id": 1}]},
            extended_entities={"media": [{"type": "video", "id": 2}]},
        ),
        _tweet(39, "dup keys"),
    ]
    lines = [_line(o) for o in objs]
    lines[-1] = lines[-1][:-1] + b', "text": "second text wins #dup"}'
    lines += [
        b"",  # blank
        b"   \r",  # blank with a CR
        b'{"id": 1, "user": {"id": 1}, "text": "bad json"',
        b'{"id": 1, "user": {"id": 1}, "text": "lone \\ud800 surrogate"}',
        b'{"id": 1, "user": {"id": 1}, "text": "ok", "x": "lone \\udc00 elsewhere"}',
        b'{"id": 1, "user": {"id": 1}, "text": "pair \\ud83d\\ude00 #emoji\\ud83d\\ude00"}',
        b'{"id": 1, "user": {"id": 1}, "text": "deep", "x": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}",
        b'{"id": 1, "user": {"id": 1}, "text": "not utf-8 \xff\xfe"}',
        b'{"id": 1, "user": {"id": 1}, "text": "nan", "x": NaN}',
        b'{"id": 1, "user": {"id": 1}, "text": "control \x01 char"}',
        b"[1, 2]",
        b'{"id": 1, "user": {"id": 1}, "text": "crlf #end"}\r',
    ]
    return lines


def _read(paths, engine, tmp_path, **kw):
    q = tmp_path / f"q-{engine}.jsonl"
    r = PostReader(engine=engine, quarantine_path=q, max_text_chars=200, **kw)
    tables = list(r.iter_tables(paths, batch_size=7))
    table = pa.concat_tables(tables) if tables else None
    return table, r.report.to_json(), q.read_text() if q.exists() else ""


def _posts(paths, engine, tmp_path, **kw):
    q = tmp_path / f"qp-{engine}.jsonl"
    r = PostReader(engine=engine, quarantine_path=q, max_text_chars=200, **kw)
    pairs = list(r.iter_posts(paths))
    # the same quarantine records; a fast file's duplicate ids come after its other rejections
    return pairs, r.report.to_json(), sorted(q.read_text().splitlines()) if q.exists() else []


def _assert_same(paths, tmp_path, **kw):
    fast = _read(paths, "fast", tmp_path, **kw)
    ref = _read(paths, "python", tmp_path, **kw)
    # iter_posts reads through the fast tables too (PostReader._file_posts): the same Post
    # records and sources, counts and quarantine as the reference parser's
    assert _posts(paths, "fast", tmp_path, **kw) == _posts(paths, "python", tmp_path, **kw)
    assert fast[1] == ref[1]
    assert fast[2] == ref[2]
    assert fast[0].to_pylist() == ref[0].to_pylist()
    assert fast[0].schema == ref[0].schema
    return fast


def test_fast_v1_equals_reference_on_hostile_lines(tmp_path):
    path = tmp_path / "tweets.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(_hostile()) + b"\n")
    table, report, quarantine = _assert_same([path], tmp_path)
    assert report["files"] == {str(path): "twitter_v1"}
    # each hostile record is a counted, quarantined rejection, never a traceback
    assert report["rejected"] >= 19, report
    for problem in ("must be a string", "must be a list of objects", "lone UTF-16 surrogate",
                    "nested too deeply", "invalid UTF-8", "malformed JSON", "empty text",
                    "text too long"):  # fmt: skip
        assert problem in quarantine, problem
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["1001"]["hashtags"] == ["über", "full"]
    assert rows["1001"]["media"] == ["photo:55", "media:56"]
    assert rows["1002"]["text"] == "long <3 #日本 @eve" and rows["1002"]["media"] == ["video:9"]
    assert rows["1003"]["is_retweet"] and rows["1003"]["hashtags"] == ["long"]
    assert rows["1003"]["retweet_of_author"] == {"id": "9", "handle": "orig"}
    assert rows["1006"]["reply_to_user"] == {"id": "7", "handle": "bob"}
    assert rows["1001"]["created_at"] == "2018-10-10T20:19:24+00:00"
    assert rows["1039"]["text"] == "second text wins #dup"
    assert rows["1040"]["hashtags"] == ["über", "full", "strasse", "fine", "x"]
    assert rows["1041"]["hashtags"] == ["über", "full"]
    assert rows["1042"]["created_at"] == "2016-02-29T20:19:24+00:00"
    assert rows["1043"]["created_at"] == "Thu Feb 29 20:19:24 +0000 2018"  # kept as given
    assert rows["1046"]["created_at"] == "2018-10-10T20:19:24+01:00"
    assert rows["1060"]["created_at"] == "2018-10-10T20:19:24+00:00"


def test_fast_v1_equals_reference_on_generated_corpus(tmp_path):
    lines = [json.dumps(t) for t in v1_tweets(n_posts=400, seed=3)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:200]) + "\n")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines[200:])).encode()))
    table, report, _ = _assert_same([tmp_path], tmp_path)
    assert report["accepted"] == 400 and table.column("is_retweet").to_pylist().count(True) > 40


def test_fast_v1_chunks_and_workers_equal_one_pass(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [json.dumps(t).encode() for t in v1_tweets(n_posts=60, seed=4)]
    path.write_bytes(
        b"\xef\xbb\xbf" + b"\n".join(lines[:30] + _hostile() + lines[30:])
    )  # no final newline
    ref = _read([path], "python", tmp_path)
    # byte ranges read by the workers themselves (data=None) start and end anywhere in a line
    # (lines of 1-2 kB; the deep line of 200 kB spans ranges in which no line starts); chunks of
    # an in-memory (decompressed) file are cut at line breaks
    cases = ((1, 1000, None), (1, 701, None), (2, 3000, None), (2, 3000, "data"))
    for workers, chunk, data in cases:
        reader = PostReader(quarantine_path=tmp_path / "q.jsonl", max_text_chars=200)
        q = Quarantine(reader.quarantine_path)
        raw = path.read_bytes() if data else None
        tables = list(v1_tables(reader, path, q, raw, workers=workers, chunk_bytes=chunk))
        q.close()
        assert len(tables) > 3
        assert pa.concat_tables(tables).to_pylist() == ref[0].to_pylist()
        assert (tmp_path / "q.jsonl").read_text() == ref[2]
        assert reader.report.accepted == ref[1]["accepted"]


def test_fast_v1_strict_stops_at_same_first_line(tmp_path):
    path = tmp_path / "t.jsonl"
    good = _line(_tweet(1, "fine #a"))
    path.write_bytes(
        b"\n".join(
            [good, good, _line(_tweet(2, "x", entities={"hashtags": [{"text": 5}]})), b"{bad"]
        )
    )
    for engine in ("fast", "python"):
        with pytest.raises(InputError, match=r"t.jsonl:3: field 'entities.hashtags\[\]"):
            list(PostReader(engine=engine, strict=True).iter_tables([path]))
        with pytest.raises(InputError, match=r"t.jsonl:3: field 'entities.hashtags\[\]"):
            list(PostReader(engine=engine, strict=True).iter_posts([path]))


def test_v1_arrays_still_read_by_reference(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps([_tweet(1, "a #x"), _tweet(2, "b #y")]))
    table, report, _ = _assert_same([path], tmp_path)
    assert report["accepted"] == 2


@pytest.mark.parametrize("content", [b"ab\n\ncde\r\nf\n\n\ngh", b"ab\n\ncde\r\nf\n\n\ngh\n", b"\n"])
def test_v1_byte_ranges_hold_each_line_once_with_its_number(tmp_path, content):
    path = tmp_path / "t.jsonl"
    path.write_bytes(content)
    want = list(enumerate(content.split(b"\n"), 1))
    if content.endswith(b"\n"):
        want.pop()  # no line after the last line break
    for size in range(1, len(content) + 2):  # a range boundary at every byte
        got, before = [], 0
        for start in range(0, len(content), size):
            chunk, newlines, first = _read_range(str(path), start, min(start + size, len(content)))
            body = chunk[:-1] if chunk.endswith(b"\n") else chunk
            got += (
                [(before + first + i, ln) for i, ln in enumerate(body.split(b"\n"))]
                if chunk
                else []
            )
            before += newlines
        assert got == want, size
