"""Each reader on hand-written records of its format, format detection, and the bad-input policy."""

import gzip
import json

import pytest

from ntulm.errors import InputError
from ntulm.posts import PostReader, UserRef


def read(paths, **kw):
    r = PostReader(**kw)
    posts = [p for p, _ in r.iter_posts(paths if isinstance(paths, list) else [paths])]
    return posts, r.report


V1_EXTENDED = {
    "id": 1001,
    "id_str": "1001",
    "created_at": "Wed Oct 10 20:19:24 +0000 2018",
    "lang": "en",
    "text": "Our paper was accepted at @WNUT with @user2 #nlproc https://t.co/x …",
    "truncated": True,
    "user": {"id_str": "11", "screen_name": "User1"},
    "entities": {
        "hashtags": [{"text": "nlproc"}],
        "user_mentions": [{"id_str": "21", "screen_name": "WNUT"}],
    },
    "extended_tweet": {
        "full_text": "Our paper was accepted at @WNUT with @user2 @user3 #NLProc #SocialMedia &amp; more",
        "entities": {
            "hashtags": [{"text": "NLProc"}, {"text": "SocialMedia"}],
            "user_mentions": [
                {"id_str": "21", "screen_name": "WNUT"},
                {"id_str": "22", "screen_name": "user2"},
                {"id_str": "23", "screen_name": "user3"},
            ],
            "urls": [{"url": "https://t.co/x", "expanded_url": "https://arxiv.org/abs/2210.14309"}],
        },
        "extended_entities": {"media": [{"id_str": "555", "type": "photo"}]},
    },
}
V1_TRIMMED_REPLY = {
    "id_str": "1002",
    "text": "@User1 congrats! #nlproc",
    "user": {"id": 12},  # trimmed to its id
    "in_reply_to_status_id_str": "1001",
    "in_reply_to_user_id_str": "11",
    "in_reply_to_screen_name": "User1",
    "entities": {
        "hashtags": [{"text": "nlproc"}],
        "user_mentions": [{"id_str": "11", "screen_name": "User1"}],
    },
}
V1_RETWEET = {
    "id_str": "1003",
    "text": "RT @User1: Our paper was accepted at @WNUT with… #nlp",
    "user": {"id_str": "13", "screen_name": "fan"},
    "entities": {
        "hashtags": [{"text": "nlp"}],
        "user_mentions": [{"id_str": "11", "screen_name": "User1"}],
    },
    "retweeted_status": V1_EXTENDED,
}


def test_twitter_v1_extended_trimmed_retweet_reply(lines):
    posts, rep = read(lines("v1.jsonl", [V1_EXTENDED, V1_TRIMMED_REPLY, V1_RETWEET]))
    assert rep.files and list(rep.files.values()) == ["twitter_v1"]
    a, b, c = posts
    assert a.id == "1001" and a.author == UserRef("11", "user1")
    assert a.text.endswith("#SocialMedia & more")  # full text, HTML entities decoded
    assert a.hashtags == ["nlproc", "socialmedia"]
    assert [m.handle for m in a.mentions] == ["wnut", "user2", "user3"]
    assert a.urls == ["https://arxiv.org/abs/2210.14309"] and a.media == ["photo:555"]
    assert a.created_at == "2018-10-10T20:19:24+00:00"
    assert (
        b.author == UserRef(id="12")
        and b.reply_to_id == "1001"
        and b.reply_to_user == UserRef("11", "user1")
    )
    assert c.is_retweet and c.author == UserRef("13", "fan")
    assert c.retweet_of_id == "1001" and c.retweet_of_author == UserRef("11", "user1")
    assert c.hashtags == ["nlproc", "socialmedia"]  # the original's, not the truncated RT text's


def test_twitter_v1_json_array_and_no_entities(tmp_path):
    path = tmp_path / "tweets.json"
    no_entities = {
        "id": 7,
        "text": "plain #Tag @Someone http://a.com/x",
        "user": {"id": 5, "screen_name": "me"},
    }
    path.write_text(json.dumps([V1_EXTENDED, no_entities], indent=2))
    posts, rep = read(path)
    assert rep.files[str(path)] == "twitter_v1" and len(posts) == 2
    assert posts[1].hashtags == ["tag"] and posts[1].mentions == [UserRef(handle="someone")]
    assert posts[1].urls == ["http://a.com/x"]


V2_RESPONSE = {
    "data": [
        {
            "id": "2001",
            "text": "Hello #World from @bob https://t.co/y",
            "author_id": "31",
            "created_at": "2022-06-01T10:00:00.000Z",
            "lang": "en",
            "entities": {
                "hashtags": [{"start": 6, "end": 12, "tag": "World"}],
                "mentions": [{"start": 18, "end": 22, "username": "bob", "id": "32"}],
                "urls": [{"url": "https://t.co/y", "expanded_url": "https://example.org/page"}],
            },
            "attachments": {"media_keys": ["3_99"]},
        },
        {
            "id": "2002",
            "text": "RT @alice: Hello #World from @bob…",
            "author_id": "32",
            "referenced_tweets": [{"type": "retweeted", "id": "2001"}],
        },
        {
            "id": "2003",
            "text": "@alice indeed",
            "author_id": "33",
            "in_reply_to_user_id": "31",
            "referenced_tweets": [{"type": "replied_to", "id": "2001"}],
            "entities": {"mentions": [{"username": "alice", "id": "31"}]},
        },
    ],
    "includes": {
        "users": [{"id": "31", "username": "Alice"}, {"id": "32", "username": "bob"}],
        "tweets": [
            {
                "id": "2001",
                "text": "Hello #World from @bob https://t.co/y",
                "author_id": "31",
                "entities": {"hashtags": [{"tag": "World"}]},
            }
        ],
        "media": [{"media_key": "3_99", "type": "photo"}],
    },
}


def test_twitter_v2_response_lines_and_document(lines, tmp_path):
    posts, rep = read(lines("v2.jsonl", [V2_RESPONSE]))
    assert list(rep.files.values()) == ["twitter_v2"] and rep.accepted == 3
    a, rt, reply = posts
    assert a.author == UserRef("31", "alice") and a.hashtags == ["world"]
    assert a.mentions == [UserRef("32", "bob")] and a.urls == ["https://example.org/page"]
    assert a.media == ["photo:3_99"]
    assert (
        rt.is_retweet
        and rt.retweet_of_id == "2001"
        and rt.retweet_of_author == UserRef("31", "alice")
    )
    assert rt.text == "Hello #World from @bob https://t.co/y"
    assert reply.reply_to_id == "2001" and reply.reply_to_user == UserRef("31", "alice")
    doc = tmp_path / "page.json"
    doc.write_text(json.dumps(V2_RESPONSE, indent=2))  # one pretty-printed response per file
    posts2, rep2 = read(doc)
    assert rep2.files[str(doc)] == "twitter_v2" and [p.id for p in posts2] == [
        "2001",
        "2002",
        "2003",
    ]


IRA_HEADER = (
    "external_author_id,author,content,region,language,publish_date,harvested_date,following,followers,"
    "updates,post_type,account_type,retweet,account_category,new_june_2018"
)


def test_ira_csv(tmp_path):
    rows = [
        IRA_HEADER,
        '906000000000000000,10_GOP,"We\'re back &amp; #FreeSpeech @CNN",Unknown,English,2017-09-07 19:52:00,x,0,0,1,,Right,0,RightTroll,0',
        '2587100717,leftie,"RT @10_gop: multi\nline #Tag",United States,English,2017-09-08 10:00:00,x,0,0,1,RETWEET,Left,1,LeftTroll,0',
    ]
    path = tmp_path / "IRAhandle_tweets_en_01.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    posts, rep = read(path)
    assert rep.files[str(path)] == "ira_csv" and rep.accepted == 2
    a, b = posts
    assert a.id == "IRAhandle_tweets_en_01:2"
    assert a.author == UserRef(None, "10_gop")  # the rounded id is dropped
    assert a.text == "We're back & #FreeSpeech @CNN" and a.hashtags == ["freespeech"]
    assert a.labels == {
        "account_category": "RightTroll",
        "account_type": "Right",
        "region": "Unknown",
    }
    assert b.id == "IRAhandle_tweets_en_01:3" and b.author == UserRef("2587100717", "leftie")
    assert b.is_retweet and b.retweet_of_author == UserRef(handle="10_gop") and b.mentions == []
    assert b.text == "RT @10_gop: multi\nline #Tag" and b.labels["post_type"] == "RETWEET"


def test_project_jsonl_schema(lines):
    rec = {
        "id": 1,
        "text": "hi #A @b",
        "author": {"id": "9", "handle": "@Me"},
        "favorited_by": ["x", 42],
        "labels": {"topic": "sports", "flag": True},
        "urls": ["https://a.org"],
    }
    posts, _ = read(
        lines("p.jsonl", [rec, {"id": "2", "text": "t", "author": None, "hashtags": ["#X"]}])
    )
    a, b = posts
    assert (
        a.id == "1"
        and a.author == UserRef("9", "me")
        and a.hashtags == ["a"]
        and a.mentions == [UserRef(handle="b")]
    )
    assert a.favorited_by == [UserRef(handle="x"), UserRef(id="42")]
    assert a.labels == {"topic": "sports", "flag": "true"} and a.urls == ["https://a.org"]
    assert b.author is None and b.hashtags == ["x"]


def test_gzip_detected_by_content_not_name(lines):
    path = lines("no_extension", [{"id": 1, "text": "x", "author": "a"}], gz=True)
    posts, rep = read(path)
    assert len(posts) == 1 and rep.files[str(path)] == "jsonl"


BAD = [
    {"id": 1, "text": "good", "author": "a"},
    "{not json",
    {"id": 2, "author": "a"},  # missing text
    {"id": 3, "text": "   ", "author": "a"},  # empty text
    {"id": 4, "text": "x" * 50, "author": "a"},  # too long for max_text_chars=20
    b'{"id": 5, "text": "caf\xe9", "author": "a"}',  # Latin-1 byte: invalid UTF-8
    {"id": 6, "text": "ok", "author": "a", "colour": 1},  # unknown field
    ["not", "an", "object"],
    {"id": 7, "text": "good too", "author": "b"},
]


def test_bad_input_is_counted_and_quarantined(lines, tmp_path):
    q = tmp_path / "rejected.jsonl"
    posts, rep = read(lines("bad.jsonl", BAD), max_text_chars=20, quarantine_path=q)
    assert [p.id for p in posts] == ["1", "7"]
    assert rep.read == len(BAD) == rep.accepted + rep.rejected and rep.rejected == 7
    rejected = [json.loads(x) for x in q.read_text().splitlines()]
    assert [r["line"] for r in rejected] == [2, 3, 4, 5, 6, 7, 8]
    problems = " | ".join(r["problem"] for r in rejected)
    for expected in (
        "malformed JSON",
        "missing required field 'text'",
        "empty text",
        "text too long",
        "invalid UTF-8",
        "unknown field(s) colour",
        "expected a JSON object",
    ):
        assert expected in problems
    assert all(r["file"].endswith("bad.jsonl") for r in rejected)


def test_strict_fails_on_first_bad_record_naming_file_and_line(lines):
    path = lines("bad.jsonl", BAD)
    with pytest.raises(InputError) as exc:
        read(path, strict=True)
    assert (
        str(exc.value)
        == f"{path}:2: malformed JSON: Expecting property name enclosed in double quotes at column 2"
    )


def test_truncated_gzip_is_reported(tmp_path):
    data = gzip.compress(
        b"".join(
            json.dumps({"id": i, "text": "t", "author": "a"}).encode() + b"\n" for i in range(2000)
        )
    )
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    posts, rep = read(path)
    assert (
        0 < len(posts) < 2000
        and rep.rejected == 1
        and "truncated or corrupt gzip" in next(iter(rep.reasons))
    )
    with pytest.raises(InputError, match="truncated or corrupt gzip"):
        read(path, strict=True)


def test_mixed_directory_unknown_and_empty_files(tmp_path, lines):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    lines("d/a.jsonl", [{"id": 1, "text": "x", "author": "a"}])
    lines("d/sub/b.jsonl", [V1_EXTENDED])
    (tmp_path / "d" / "README.md").write_text("# notes\n")
    (tmp_path / "d" / "empty.jsonl").write_text("")
    (tmp_path / "d" / ".hidden").write_text("junk")
    posts, rep = read(tmp_path / "d")
    assert [p.id for p in posts] == ["1", "1001"]
    assert sorted(rep.files.values()) == ["jsonl", "twitter_v1"]
    assert {k.split("/")[-1]: v for k, v in rep.files_skipped.items()} == {
        "README.md": "unknown format (not JSON Lines, a JSON array or document, or the IRA CSV layout)",
        "empty.jsonl": "empty file",
    }
    with pytest.raises(InputError, match="README.md: unknown format"):
        read(tmp_path / "d", strict=True)


def test_missing_path_and_bad_format_name(tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        read(tmp_path / "nope")
    with pytest.raises(InputError, match="unknown format 'xml'"):
        PostReader(format="xml")


def test_ira_csv_bad_rows(tmp_path):
    rows = [
        IRA_HEADER,
        "1,a,short row",
        '906000000000000000,,"no author",U,English,2017-01-01 00:00:00,x,0,0,1,,R,0,RightTroll,0',
    ]
    path = tmp_path / "ira.csv"
    path.write_bytes(
        ("\n".join(rows) + "\n").encode()
        + b'906000000000000000,b,"caf\xe9",U,English,2017-01-01 00:00:00,x,0,0,1,,R,0,RightTroll,0\n'
    )
    posts, rep = read(path, quarantine_path=tmp_path / "q.jsonl")
    assert posts == [] and rep.read == 3 and rep.rejected == 3
    assert set(rep.reasons) == {"expected 15 fields, got 3", "empty 'author'", "invalid UTF-8"}
