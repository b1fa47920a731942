"""The fast readers equal the Python reference: same posts table, counts and quarantine."""

import csv
import gzip
import io
import json

import pyarrow as pa
import pytest

from ntulm.errors import ConfigError, InputError
from ntulm.posts.readers import PostReader

HEADER = [
    "external_author_id", "author", "content", "region", "language", "publish_date",
    "harvested_date", "following", "followers", "updates", "post_type", "account_type",
    "retweet", "account_category", "new_june_2018",
]  # fmt: skip

# Texts of the extraction tests and hostile ones: entities, non-ASCII, URLs, e-mails, emoji.
TEXTS = [
    "Go #NLProc and #日本 and #हिन्दी #Ｆｕｌｌ #über!",
    "#1 and #2020 are numbers, a#b is not a tag, &#39; nor, but #tag_2020 is",
    "#Tag. #tag, (#other) @Alice: @alice! see https://x.org/a).",
    "mail me at bob@example.com or http://site.com/page#section @real_user",
    "We're back &amp; #FreeSpeech @CNN &lt;3 &quot;q&quot; &amp;lt; &ampx #a&b",
    "RT @10_gop: multi\nline #Tag @10_GOP @other",
    "RT @x: https://t.co/abc… #Cut… pic.twitter.com/xyz www.Example.com/p?q=1#f.",
    "😀 #emoji😀 @user😀 ＠full ＃full #ok\u00a0https://a.b/c\u00a0#x https://www.x.com:80/a",
    "@aaaaaaaaaaaaaaaaaa @ok@ ##double x@y #a#b @a_b. HTTP://UP.COM/X) (www.in.paren)",
    "#tag\ufe0f and \u200d#zwj e\u0301#mark \ufffd#repl",
    "   ",
    "\u00a0",  # empty after strip(): rejected by both paths
    " \u00a0\t\n\u00a0",
    "a" * 150,
]


def _rows(texts):
    rows = []
    for i, t in enumerate(texts):
        rt = "1" if t.startswith("RT") else "0"
        uid = "906000000000000000" if i % 3 == 0 else str(1000 + i)
        rows.append([uid, f"@User{i % 4}", t, "US", "English", f"2017-01-0{1 + i % 9} 10:00:00",
                     "x", "0", "0", "1", "RETWEET" if rt == "1" else "", "Right", rt, "Troll", "0"])  # fmt: skip
    return rows


def _csv(rows, header=HEADER, quoting=csv.QUOTE_MINIMAL) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, quoting=quoting, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _read(paths, engine, tmp_path, **kw):
    q = tmp_path / f"q-{engine}.jsonl"
    r = PostReader(engine=engine, quarantine_path=q, max_text_chars=120, **kw)
    tables = list(r.iter_tables(paths, batch_size=7))
    table = pa.concat_tables(tables) if tables else None
    return table, r.report.to_json(), q.read_text() if q.exists() else ""


def _posts(paths, engine, tmp_path, **kw):
    q = tmp_path / f"qp-{engine}.jsonl"
    r = PostReader(engine=engine, quarantine_path=q, max_text_chars=120, **kw)
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
    return fast


def test_fast_equals_reference_on_plain_csv(tmp_path):
    path = tmp_path / "IRAhandle_tweets_en_01.csv.gz"
    path.write_bytes(gzip.compress(_csv(_rows(TEXTS * 3))))
    table, report, quarantine = _assert_same([path], tmp_path)
    assert report["rejected"] == 12 and table.num_rows == 3 * len(TEXTS) - 12  # 4 texts x 3
    assert "empty text" in quarantine and "text too long" in quarantine
    ids = table.column("id").to_pylist()
    assert ids[:7] == [f"IRAhandle_tweets_en_01:{n}" for n in (2, 3, 4, 5, 6, 7, 9)]  # 7: 2 lines


def test_fast_equals_reference_on_hostile_csv(tmp_path):
    good = _csv(_rows(TEXTS))
    hostile = (
        good
        + b"1,short,row\n\n"  # a short row and a blank line
        + b'2,bad,"\xff\xfe not utf-8",US,English,2017,x,0,0,1,,R,0,T,0\n'
        + b'3,quoted,"odd ""quote"" ""here""",US,English,2017,x,0,0,1,,R,0,T,0\r\n'
        + b'"4",fully,"quoted\rcr #tag",US,English,2017,x,0,0,1,,R,0,T,0\n'
        + b"5,last,no newline at end #end @me,US,English,2017,x,0,0,1,,R,0,T,0"
    )
    (tmp_path / "a.csv").write_bytes(hostile)
    (tmp_path / "b.csv").write_bytes(_csv(_rows(TEXTS), quoting=csv.QUOTE_ALL))
    table, report, quarantine = _assert_same([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path)
    assert report["rejected_by_reason"]["invalid UTF-8"] == 1
    assert "expected 15 fields, got 3" in quarantine


def test_iter_posts_streams_a_big_file_through_the_reference(tmp_path, monkeypatch):
    """A fast reader holds a whole file in memory; iter_posts (finetune, embed) streams files over
    the size limit through the reference parser instead: the same posts, counts, quarantine."""
    import ntulm.posts.fast_ira as fast_ira
    import ntulm.posts.readers as readers

    path = tmp_path / "IRAhandle_tweets_en_01.csv.gz"
    path.write_bytes(gzip.compress(_csv(_rows(TEXTS * 2))))
    ref = _posts([path], "python", tmp_path)
    assert _posts([path], "fast", tmp_path) == ref  # small: the fast tables

    def no_fast(*a, **kw):
        raise AssertionError("the fast reader read a file over the limit")

    monkeypatch.setattr(readers, "_FAST_POSTS_MAX_BYTES", path.stat().st_size - 1)
    monkeypatch.setattr(fast_ira, "ira_tables", no_fast)
    assert _posts([path], "fast", tmp_path) == ref
    with pytest.raises(AssertionError, match="over the limit"):
        _read([path], "fast", tmp_path)  # the posts table (build-graph) still reads it fast


def test_iter_posts_limit_streams_the_first_posts(tmp_path, monkeypatch):
    """iter_posts(limit=N) yields the first N posts of the unlimited read; below _STREAM_BELOW
    it reads them through the reference parser (no whole-file parse before the first post),
    at or above it through the fast tables; a negative limit is an error naming it."""
    import ntulm.posts.fast_ira as fast_ira
    import ntulm.posts.readers as readers

    path = tmp_path / "IRAhandle_tweets_en_01.csv.gz"
    path.write_bytes(gzip.compress(_csv(_rows(TEXTS * 3))))
    every = [p for p, _ in PostReader(engine="fast").iter_posts([path])]
    assert len(every) > 5
    calls = []
    real = fast_ira.ira_tables
    monkeypatch.setattr(fast_ira, "ira_tables", lambda *a, **k: calls.append(1) or real(*a, **k))
    for n in (1, 5, len(every), len(every) + 3):
        got = [p for p, _ in PostReader(engine="fast").iter_posts([path], limit=n)]
        assert got == every[:n], n
    assert calls == []  # all streamed: the limits are below _STREAM_BELOW
    monkeypatch.setattr(readers, "_STREAM_BELOW", 5)
    assert [p for p, _ in PostReader(engine="fast").iter_posts([path], limit=5)] == every[:5]
    assert calls == [1]  # a limit of 5 is no longer below it: the fast tables
    with pytest.raises(ConfigError, match="limit: -1 is negative"):
        list(PostReader().iter_posts([path], limit=-1))


def test_fast_strict_stops_at_first_bad_row(tmp_path):
    path = tmp_path / "ira.csv"
    path.write_bytes(_csv(_rows(["ok #a", "   ", "fine"])))
    for engine in ("fast", "python"):
        with pytest.raises(InputError, match=r"ira.csv:3: empty text"):
            list(PostReader(engine=engine, strict=True).iter_tables([path]))
        with pytest.raises(InputError, match=r"ira.csv:3: empty text"):
            list(PostReader(engine=engine, strict=True).iter_posts([path]))


def test_fast_header_problems_and_other_formats(tmp_path):
    (tmp_path / "nocontent.csv").write_bytes(
        _csv([["1", "a"]], header=["external_author_id", "author"])
    )
    (tmp_path / "posts.jsonl").write_text(
        json.dumps({"id": "1", "text": "#x @y", "author": "a"}) + "\n"
    )
    _assert_same([tmp_path], tmp_path)


# Fragments of adversarial text: the extraction test cases' tricky spots, Unicode letters and
# marks, entities (valid, numeric, unknown, bare), URLs with fragments, brackets and trailing
# punctuation, e-mails, '@' and '#' in odd places, fullwidth signs, emoji, odd spaces.
FRAGMENTS = [
    "#NLProc", "#日本", "#हिन्दी", "#Ｆｕｌｌ", "#Straße", "#über", "#1", "#2020", "a#b", "#tag_2020",
    "##double", "#a#b", "&#35;tag", "#Tag.", "(#other)", "@Alice:", "@alice!", "@ok@", "x@y",
    "@aaaaaaaaaaaaaaaaaa", "@a_b.", "＠full", "＃full", "@user😀", "#emoji😀", "😀", "…", "#Cut…",
    "https://x.org/a).", "http://site.com/page#section", "HTTP://UP.COM/X)", "(www.in.paren)",
    "www.Example.com/p?q=1#f.", "https://www.x.com:80/a", "pic.twitter.com/xyz",
    "https://pbs.twimg.com/media/a.jpg", "https://t.co/abc…", "http://[::1]/x", "https://a.b/c]",
    "https://ex.com/a_(b)", "bob@example.com", "jo.e+1@mail.co.uk", "ann@", "@@x", "#@x", "@#x",
    "&amp;", "&lt;3", "&quot;q&quot;", "&amp;lt;", "&ampx", "&#39;", "&#x1F600;", "&nbsp;", "&",
    "RT", "rt", "e\u0301#mark", "#tag\ufe0f", "\u200d#zwj", "\ufffd#repl", "\u00a0", "\u2003",
    "\t", "\n", "naïve", "Привет", "#Привет", "#café", "ΣΊΣΥΦΟΣ", "#ΣΊΣΥΦΟΣ", "ﬁ", "#ﬁne",
    "word", "words", "and", "the", "x", "'", '"', ",", ".", "!", "?", "*", "/", "#", "@",
]  # fmt: skip


def _adversarial_rows(n, seed):
    import random

    rng = random.Random(seed)
    rows = []
    ascii_ = [f for f in FRAGMENTS if f.isascii() and "&" not in f]
    for _ in range(n):
        plain = rng.random() < 0.5  # half the rows from ASCII fragments, clean cells
        pool = ascii_ if plain else FRAGMENTS
        parts = [rng.choice(pool) for _ in range(rng.randint(1, 9))]
        text = "".join(p + rng.choice([" ", " ", "", "\n", ",", "\u00a0"]) for p in parts)
        if rng.random() < 0.15:
            text = f"RT @{rng.choice(['User1', '10_gop', 'x' * 16, 'a b'])}: {text}"
        rt = rng.choice(["0", "1", " 1 ", "true", "", "yes", "no"] + ["maybe"] * (not plain))
        uid = rng.choice(["906000000000000000", "12345", " 77 ", "", "9.06E+17", "abc"])
        author = rng.choice(
            ["User1", "@User2", " bob ", "Carol\t"] + ["", "@", "ünï"] * (not plain)
        )
        date = rng.choice(["2017-01-01 10:00", "2017-01-01 10:00:00", "", "x y",
                           "Wed Oct 10 20:19:24 +0000 2018", "2017-01-01T10:00"])  # fmt: skip
        label = rng.choice(["Right", " Left ", "", "a,b", "x\ty"] + ["Ünï"] * (not plain))
        lang = rng.choice(["English", "english ", "", "Russian"] + ["Ελληνικά"] * (not plain))
        rows.append([uid, author, text, label, lang, date, "x", "0", "0", "1",
                     rng.choice(["RETWEET", ""]), label, rt, "Troll", "0"])  # fmt: skip
    return rows


def test_fast_equals_reference_on_generated_adversarial_corpus(tmp_path):
    """Random texts and cells from adversarial fragments: the same posts table, counts and
    quarantine; most rows take the fast (SQL + Arrow) path, so the comparison is not vacuous."""
    from ntulm.posts import fast_ira

    rows = _adversarial_rows(600, seed=12)
    path = tmp_path / "IRAhandle_tweets_en_09.csv"
    path.write_bytes(_csv(rows))
    # a file without the optional label and language columns
    keep = [h for h in HEADER if h not in ("region", "language", "post_type")]
    idx = [HEADER.index(h) for h in keep]
    slim = tmp_path / "slim.csv"
    slim.write_bytes(_csv([[r[i] for i in idx] for r in _adversarial_rows(300, seed=13)], keep))
    table, report, _ = _assert_same([path, slim], tmp_path)
    assert table.num_rows > 300 and report["rejected"] > 0
    data = fast_ira._read_bytes(path)
    parsed = fast_ira._arrow_rows(data, fast_ira._header(data), False)
    parsed = parsed.drop_columns(["_breaks"]).append_column("_line", pa.array(range(600)))
    posts, ok = fast_ira._extract(parsed, HEADER, "s", "n", 120, 1)
    assert ok.sum() > 100 and (~ok).sum() > 100  # both paths are exercised
    fast = posts.filter(ok)
    assert any(fast.column("labels").to_pylist()) and any(fast.column("hashtags").to_pylist())


def test_fast_bare_ampersand_takes_the_sql_path(tmp_path):
    """A bare '&' (before a space, tab or line break, or at the end) is left alone by
    html.unescape: such rows take the SQL path and equal the reference; an '&' before anything
    else (a possible entity name) still goes to the reference."""
    from ntulm.posts import fast_ira

    bare = ["Clinton & Trump #Debate", "a &\tb @x", "x &\ny", "end &", "&amp;& x &lt;3 #a &",
            "& &amp;lt; &quot;q&quot; &", "RT @User1: Q & A &\n#tag"]  # fmt: skip
    other = ["&&", "&nbsp;x", "&ampx", "&#39;", "a&b", "&,x", "&;x"]
    path = tmp_path / "amp.csv"
    path.write_bytes(_csv(_rows(bare + other)))
    table, report, _ = _assert_same([path], tmp_path)
    assert report["accepted"] == len(bare + other)
    data = fast_ira._read_bytes(path)
    parsed = fast_ira._arrow_rows(data, fast_ira._header(data), False)
    parsed = parsed.drop_columns(["_breaks"]).append_column(
        "_line", pa.array(range(len(bare + other)))
    )
    _, ok = fast_ira._extract(parsed, HEADER, "s", "n", 120, 1)
    assert ok.tolist() == [True] * len(bare) + [False] * len(other)
