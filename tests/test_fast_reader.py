"""The fast readers equal the Python reference: same posts table, counts and quarantine."""

import csv
import gzip
import io
import json

import pyarrow as pa
import pytest

from ntulm.errors import InputError
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


def _assert_same(paths, tmp_path, **kw):
    fast = _read(paths, "fast", tmp_path, **kw)
    ref = _read(paths, "python", tmp_path, **kw)
    assert fast[1] == ref[1]
    assert fast[2] == ref[2]
    assert fast[0].to_pylist() == ref[0].to_pylist()
    return fast


def test_fast_equals_reference_on_plain_csv(tmp_path):
    path = tmp_path / "IRAhandle_tweets_en_01.csv.gz"
    path.write_bytes(gzip.compress(_csv(_rows(TEXTS * 3))))
    table, report, quarantine = _assert_same([path], tmp_path)
    assert report["rejected"] == 6 and table.num_rows == 3 * len(TEXTS) - 6
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


def test_fast_strict_stops_at_first_bad_row(tmp_path):
    path = tmp_path / "ira.csv"
    path.write_bytes(_csv(_rows(["ok #a", "   ", "fine"])))
    for engine in ("fast", "python"):
        with pytest.raises(InputError, match=r"ira.csv:3: empty text"):
            list(PostReader(engine=engine, strict=True).iter_tables([path]))


def test_fast_header_problems_and_other_formats(tmp_path):
    (tmp_path / "nocontent.csv").write_bytes(
        _csv([["1", "a"]], header=["external_author_id", "author"])
    )
    (tmp_path / "posts.jsonl").write_text(
        json.dumps({"id": "1", "text": "#x @y", "author": "a"}) + "\n"
    )
    _assert_same([tmp_path], tmp_path)
