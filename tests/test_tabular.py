"""Tabular posts (CSV/TSV/Parquet through a column mapping) and labels from a side table."""

import csv
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ntulm.cli import main
from ntulm.errors import ConfigError, InputError
from ntulm.evaluate import classification_task
from ntulm.graph.config import GraphConfig
from ntulm.posts.formats import parse_ira_row
from ntulm.posts.readers import PostReader
from ntulm.posts.rows import PostsTable
from ntulm.posts.table import write_posts_table
from ntulm.posts.tabular import IRA, Layout, LayoutError, parse_columns
from ntulm.synthetic import v1_tweets

KAGGLE = ["tweet_id", "user_screen_name", "user_id", "text", "created", "tags", "rt", "party"]
ROWS = [
    ["11", "Alice", "501", "Vote #Yes @bob &amp; https://a.org/x", "2020-10-01 12:00:00",
     "['Yes', 'Extra']", "False", "dem"],
    ["12", "@bob", "9.06E+17", "RT @carol: hi #no", "Wed Oct 10 20:19:24 +0000 2018", "", "1",
     "rep"],
    ["13", "carol", "", "plain words", "", "#a #b", "no", ""],
]  # fmt: skip
MAPPING = (
    "id=tweet_id,author=user_screen_name,author_id=user_id,text=text,created_at=created,"
    "hashtags=tags,is_retweet=rt,party=party"
)


def _write_csv(path, rows, header=KAGGLE, delimiter=","):
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _posts(paths, **kw):
    r = PostReader(**kw)
    return [p for p, _ in r.iter_posts(paths)], r.report


def test_mapping_reads_a_kaggle_style_csv(tmp_path):
    posts, report = _posts([_write_csv(tmp_path / "tweets.csv", ROWS)], columns=MAPPING)
    a, b, c = posts
    assert (a.id, a.author.handle, a.author.id) == ("11", "alice", "501")
    assert a.text == "Vote #Yes @bob & https://a.org/x"
    assert a.hashtags == ["yes", "extra"]  # the mapped column, not the text
    assert [m.handle for m in a.mentions] == ["bob"] and a.urls == ["https://a.org/x"]
    assert a.created_at == "2020-10-01T12:00:00" and a.labels == {"party": "dem"}
    assert a.is_retweet is False
    # a float-damaged id is dropped; Twitter's time format becomes ISO; "RT @x:" names the source
    assert b.author.id is None and b.author.handle == "bob"
    assert b.created_at == "2018-10-10T20:19:24+00:00"
    assert b.is_retweet and b.retweet_of_author.handle == "carol" and b.mentions == []
    assert c.hashtags == ["a", "b"] and c.labels == {} and c.created_at is None
    assert report.accepted == 3 and report.files == {str(tmp_path / "tweets.csv"): "table"}


def test_bad_rows_are_counted_rejections_with_file_and_line(tmp_path):
    bad = ROWS + [
        ["14", "dan", "1", "text", "", "", "maybe", "x"],  # not a boolean
        ["15", "", "1", "no author", "", "", "0", "x"],
        ["16", "eve", "1"],  # short row
        ["17", "eve", "1", "tags", "", "[unclosed", "0", "x"],
        ["18", "eve", "1", "   ", "", "", "0", "x"],
    ]
    path = _write_csv(tmp_path / "t.csv", bad)
    q = tmp_path / "rejected.jsonl"
    posts, report = _posts([path], columns=MAPPING, quarantine_path=q)
    assert len(posts) == 3 and report.read == 8 and report.rejected == 5
    rejected = [json.loads(line) for line in q.read_text().splitlines()]
    assert [(r["line"], r["problem"].split(":")[0]) for r in rejected] == [
        (5, "column 'rt'"),
        (6, "empty 'author'"),
        (7, "expected 8 fields, got 3"),
        (8, "field 'hashtags'"),
        (9, "empty text"),
    ]
    assert all(r["file"] == str(path) for r in rejected)
    with pytest.raises(InputError, match=r"t.csv:5: column 'rt': 'maybe' is not a boolean"):
        _posts([path], columns=MAPPING, strict=True)


def test_tsv_gzip_and_parquet_give_the_same_posts(tmp_path):
    ref, _ = _posts([_write_csv(tmp_path / "a.csv", ROWS)], columns=MAPPING)
    tsv = _write_csv(tmp_path / "b.tsv", ROWS, delimiter="\t")
    gz = tmp_path / "c.csv.gz"
    gz.write_bytes(gzip.compress(_write_csv(tmp_path / "c0.csv", ROWS).read_bytes()))
    table = pa.table({h: [r[i] for r in ROWS] for i, h in enumerate(KAGGLE)})
    table = table.set_column(5, "tags", pa.array([["Yes", "Extra"], [], ["a", "b"]]))
    pq.write_table(table, tmp_path / "d.parquet")
    for path in (tsv, gz, tmp_path / "d.parquet"):
        posts, report = _posts([path], columns=MAPPING)
        assert [p.to_json() for p in posts] == [p.to_json() for p in ref], path
        assert report.files[str(path)] == "table"


def test_ids_default_to_file_and_line_and_unmapped_columns_are_ignored(tmp_path):
    path = _write_csv(tmp_path / "t.csv", ROWS)
    posts, _ = _posts([path], columns={"text": "text", "author": "user_screen_name"})
    assert [p.id for p in posts] == ["t:2", "t:3", "t:4"] and posts[0].labels == {}
    assert posts[0].hashtags == ["yes"]  # extracted from the text when not mapped


def test_mapping_errors(tmp_path):
    with pytest.raises(LayoutError, match="needs text="):
        parse_columns("author=user")
    with pytest.raises(LayoutError, match="expected name=column"):
        parse_columns("text")
    with pytest.raises(ConfigError, match="columns"):
        GraphConfig.build({"columns": "author=x"})
    with pytest.raises(InputError, match="needs a column mapping"):
        PostReader(format="table")
    # a mapped column the header lacks: the file is skipped, saying which
    path = _write_csv(tmp_path / "t.csv", ROWS)
    _, report = _posts([path], columns=MAPPING.replace("=tags", "=hashtag_list"), format="table")
    assert "hashtag_list (for hashtags)" in report.files_skipped[str(path)]


def test_ira_is_a_built_in_mapping(tmp_path):
    assert parse_columns("ira") is IRA and isinstance(IRA, Layout)
    row = {
        "external_author_id": "906000000000000000", "author": "@Troll", "content": "RT @x: #Hi",
        "publish_date": "2017-01-02 03:04:05", "retweet": "1", "language": "English",
        "account_category": "RightTroll", "region": " ",
    }  # fmt: skip
    post = parse_ira_row(row, "f:2")
    assert (post.id, post.author.id, post.author.handle) == ("f:2", None, "troll")
    assert post.created_at == "2017-01-02T03:04:05" and post.lang == "en"
    assert post.retweet_of_author.handle == "x" and post.labels == {
        "account_category": "RightTroll"
    }
    # the IRA CSV as Parquet is recognised by its columns and reads like the CSV
    header = list(row)
    csv_path = _write_csv(tmp_path / "ira.csv", [list(row.values())], header=header)
    pq.write_table(pa.table({k: [v] for k, v in row.items()}), tmp_path / "ira.parquet")
    (a,), rep_a = _posts([csv_path])
    (b,), rep_b = _posts([tmp_path / "ira.parquet"])
    assert a.to_json() == b.to_json() == post.to_json() | {"id": "ira:2"}
    assert rep_a.files[str(csv_path)] == "ira_csv" and list(rep_b.files.values()) == ["ira_csv"]


def _v1_corpus(tmp_path, n=300):
    tweets = list(v1_tweets(n_posts=n, users_per_community=6, seed=3))
    path = tmp_path / "tweets.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tweets))
    return path, tweets


def _party_table(tmp_path, tweets, by_handle=False):
    users = {}
    for t in tweets:
        u = t["user"]
        users[u["screen_name"] if by_handle else u["id_str"]] = "dem" if u["id"] % 2 else "rep"
    rows = sorted(users.items())
    return _write_csv(tmp_path / "users.csv", rows, header=["user_id", "party"]), users


@pytest.mark.parametrize("by_handle", [False, True])
def test_side_table_labels_twitter_v1_posts_by_author(tmp_path, by_handle):
    path, tweets = _v1_corpus(tmp_path)
    side, users = _party_table(tmp_path, tweets, by_handle)
    posts, report = _posts([path], labels=[{"path": str(side)}])
    key = (lambda p: p.author.handle) if by_handle else (lambda p: p.author.id)
    assert all(p.labels["party"] == users[key(p)] for p in posts)
    assert report.labelled[str(side)] == len(posts) == len(tweets)
    # the table path (fast v1 reader, worker processes) labels the same posts
    reader = PostReader(labels=[{"path": str(side)}])
    write_posts_table(reader, [path], tmp_path / "posts", progress=False)
    table = PostsTable(tmp_path / "posts")
    assert table.column("labels['party']") == [p.labels["party"] for p in posts]
    assert reader.report.to_json()["labelled_from"] == {str(side): len(tweets)}
    # a task "party, split by author" runs on the tweets plus the side table
    task = classification_task(table, "party", split_by="author", min_class_count=5)
    assert task.classes == ["dem", "rep"]
    train_authors = {p.author.key for p in task.train}
    assert not train_authors & {p.author.key for p in task.test}
    table.close()


def test_side_table_by_post_id_and_its_errors(tmp_path):
    path = _write_csv(tmp_path / "t.csv", ROWS)
    side = _write_csv(tmp_path / "gold.csv", [["11", "pos"], ["13", "neg"]], ["id", "stance"])
    posts, report = _posts([path], columns=MAPPING, labels=[{"path": str(side), "by": "id"}])
    assert [p.labels.get("stance") for p in posts] == ["pos", None, "neg"]
    assert report.labelled[str(side)] == 2
    # a post's own label wins unless overwrite
    side2 = _write_csv(tmp_path / "p.csv", [["alice", "green"]], ["handle", "party"])
    posts, _ = _posts([path], columns=MAPPING, labels=[{"path": str(side2)}])
    assert posts[0].labels["party"] == "dem"
    posts, _ = _posts([path], columns=MAPPING, labels=[{"path": str(side2), "overwrite": True}])
    assert posts[0].labels["party"] == "green"
    clash = _write_csv(tmp_path / "c.csv", [["a", "x"], ["b", "y"], ["@A", "z"]], ["u", "party"])
    with pytest.raises(InputError, match=r"c.csv:4: key 'a' given twice .*first on line 2"):
        _posts([path], columns=MAPPING, labels=[{"path": str(clash)}])
    with pytest.raises(InputError, match="no key column 'who'"):
        _posts([path], columns=MAPPING, labels=[{"path": str(side2), "key": "who"}])


def test_build_graph_cli_with_columns_and_labels(tmp_path, capsys):
    path = _write_csv(tmp_path / "t.csv", ROWS)
    side = _write_csv(tmp_path / "u.csv", [["alice", "a"], ["bob", "b"]], ["user", "kind"])
    out = tmp_path / "g"
    argv = ["build-graph", "--posts", str(path), "--columns", MAPPING, "--labels", str(side),
            "--out", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["posts"]["accepted"] == 3 and stats["posts"]["labelled_from"] == {str(side): 2}
    assert main(["build-graph", "--posts", str(path), "--columns", "author=x", "--out",
                 str(tmp_path / "g2")]) == 2  # fmt: skip
    assert "needs text=" in capsys.readouterr().err
