"""One reader configuration for every command that reads posts (``posts/config.py``), formats
from the readers' own registry, post ids unique per input file, and no command running on
zero posts."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ntulm.cli import build_parser, main, read_overrides, reader_config  # noqa: E402
from ntulm.errors import ConfigError  # noqa: E402
from ntulm.graph import GraphConfig  # noqa: E402
from ntulm.posts import Post  # noqa: E402
from ntulm.posts.config import ReaderConfig  # noqa: E402
from ntulm.posts.formats import REGISTRY, Format  # noqa: E402
from ntulm.posts.readers import PostReader  # noqa: E402
from ntulm.posts.table import write_posts_table  # noqa: E402

READING_COMMANDS = ("build-graph", "ntu-stats", "finetune", "embed", "evaluate")
# every reader flag, and the ReaderConfig it must give
FLAGS = [
    "--format", "jsonl", "--strict", "--columns", "text=body", "--labels", "u.csv",
    "--max-text-chars", "99", "--duplicates", "error", "--reader", "python", "--no-quarantine",
]  # fmt: skip
EXPECTED = ReaderConfig(
    format="jsonl",
    strict=True,
    columns="text=body",
    labels=[{"path": "u.csv"}],
    max_text_chars=99,
    duplicates="error",
    engine="python",
    quarantine=False,
)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


# ------------------------------------------------------------------- one reader config
def test_every_command_that_reads_posts_takes_every_reader_key_as_a_flag():
    parsers = _subparsers()
    for name in READING_COMMANDS:
        required = {"finetune": ["--out", "o", "--no-ntu"], "ntu-stats": ["--graph", "g"]}
        required |= {"embed": ["--out", "o", "--model", "m"], "evaluate": ["--out", "o"]}
        args = parsers[name].parse_args(
            ["--posts", "p", *FLAGS, *required.get(name, ["--out", "o"])]
            + (["--model", "m"] if name == "evaluate" else [])
        )
        assert reader_config(args)[0] == EXPECTED, name
    # the flags cover the config: one flag per field
    assert {o.split("=")[0] for o in read_overrides(args)} == {
        f"read.{k}" for k in ReaderConfig.model_fields
    }
    # build-graph and ntu-stats: the flags land in the graph config's read section
    from ntulm.cli.graph import _config

    args = parsers["build-graph"].parse_args(["--posts", "p", "--out", "o", *FLAGS])
    assert _config(args).read == EXPECTED


def test_read_overrides_reach_finetune_and_embed_and_stay_out_of_their_own_config():
    args = _subparsers()["finetune"].parse_args(
        ["--posts", "p", "--out", "o", "--no-ntu", "read.duplicates=keep-all", "max_steps=3"]
    )
    read, own = reader_config(args)
    assert read.duplicates == "keep-all" and own == ["max_steps=3"]


def test_old_flat_keys_still_work_and_a_conflict_names_the_new_key(tmp_path):
    from ntulm.pipeline import PipelineConfig

    g = GraphConfig(format="jsonl", strict=True, reader="python", max_text_chars=5)
    assert g.read == ReaderConfig(format="jsonl", strict=True, engine="python", max_text_chars=5)
    assert GraphConfig.from_sources(None, ["format=jsonl"]).read.format == "jsonl"
    with pytest.raises(ConfigError, match=r"read\.format"):
        GraphConfig.from_sources(None, ["format=jsonl", "read.format=twitter_v1"])
    tasks = "eval.tasks=[{type: hashtag}]"
    for key in ("graph.format", "graph.read.format", "read.format"):
        cfg = PipelineConfig.from_sources(None, ["posts=[x]", tasks, f"{key}=jsonl"])
        assert cfg.read.format == "jsonl" and cfg.graph.read == cfg.read, key
    with pytest.raises(ConfigError, match="under read"):
        PipelineConfig.from_sources(
            None, ["posts=[x]", tasks, "graph.strict=true", "read.strict=false"]
        )
    # a config dumped and read again (ntulm evaluate does this) is the same config
    cfg = PipelineConfig.from_sources(None, ["posts=[x]", tasks, "read.strict=true"])
    assert PipelineConfig.build(cfg.model_dump(mode="json")) == cfg


def test_formats_come_from_the_readers_registry(monkeypatch, tmp_path):
    parsers = _subparsers()
    fmt = next(a for a in parsers["embed"]._actions if a.dest == "format")
    assert fmt.choices == ("auto", *REGISTRY)
    with pytest.raises(ConfigError, match="unknown format 'mini'; use auto or one of jsonl"):
        ReaderConfig.build({"format": "mini"})

    # a format registered in one place is offered, validated and read
    def parse(obj):
        yield Post(id=str(obj["k"]), text=obj["t"], author=None), None

    monkeypatch.setitem(REGISTRY, "mini", Format("mini", "a test format", parse))
    path = tmp_path / "m.jsonl"
    path.write_text('{"k": 1, "t": "hello"}\n')
    reader = ReaderConfig(format="mini").reader()
    assert [p.id for p, _ in reader.iter_posts([path])] == ["1"]


# -------------------------------------------------------------------- ids per input file
IRA_HEADER = "external_author_id,author,content,region,language,publish_date,harvested_date,following,followers,updates,post_type,account_type,retweet,account_category,new_june_2018\n"


def _ira(path: Path, who: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        f'1{i},{who},"post {i} of {who} #tag{i}",US,English,1/1/2017 10:0{i},1/1/2017 10:0{i},'
        f"1,2,3,,Right,0,RightTroll,0\n"
        for i in range(3)
    ]
    path.write_text(IRA_HEADER + "".join(rows))
    return path


@pytest.mark.parametrize("engine", ["fast", "python"])
def test_same_file_name_in_two_directories_loses_no_post(engine, tmp_path):
    d = tmp_path / "ira"
    _ira(d / "a" / "IRAhandle_tweets_1.csv", "alice")
    _ira(d / "b" / "IRAhandle_tweets_1.csv", "bob")
    _ira(d / "IRAhandle_tweets_2.csv", "carol")
    for workers in (1, 2):
        reader = ReaderConfig(engine=engine).reader()
        rep = write_posts_table(reader, [d], tmp_path / f"t{workers}", workers=workers)
        assert (rep.accepted, rep.duplicate_ids) == (9, 0)
        ids = set(pq.read_table(tmp_path / f"t{workers}", columns=["id"]).column("id").to_pylist())
        # the files that shared a name get their path below the input directory; the other
        # file keeps the id of earlier versions
        assert {"a/IRAhandle_tweets_1:2", "b/IRAhandle_tweets_1:4", "IRAhandle_tweets_2:3"} <= ids
        assert len(ids) == 9
    # streaming (finetune, embed) and files given by name: the same
    reader = PostReader(engine=engine)
    files = [d / "a" / "IRAhandle_tweets_1.csv", d / "b" / "IRAhandle_tweets_1.csv"]
    posts = [p.id for p, _ in reader.iter_posts(files)]
    assert len(set(posts)) == 6 and reader.report.duplicate_ids == 0
    assert posts[0] == f"{files[0]}:2"
    # a single directory of distinct names keeps its ids; the same file read twice repeats them
    reader = PostReader(engine=engine)
    assert [p.id for p, _ in reader.iter_posts([d / "a"])][0] == "IRAhandle_tweets_1:2"
    reader = PostReader(engine=engine)
    assert len(list(reader.iter_posts([files[0], files[0]]))) == 3
    assert reader.report.duplicate_ids == 3


def test_streaming_reads_apply_the_duplicates_policy(lines, tmp_path):
    from ntulm.errors import InputError

    path = lines("p.jsonl", [{"id": 1, "text": "a", "author": "u"}] * 2)
    q = tmp_path / "q.jsonl"
    reader = ReaderConfig().reader(q)
    assert len(list(reader.iter_posts([path]))) == 1
    assert (reader.report.accepted, reader.report.rejected, reader.report.duplicate_ids) == (
        1,
        1,
        1,
    )
    assert json.loads(q.read_text())["problem"].startswith("duplicate post id")
    assert len(list(ReaderConfig(duplicates="keep-all").reader().iter_posts([path]))) == 2
    with pytest.raises(InputError, match=f"{path}:2: duplicate post id '1'"):
        list(ReaderConfig(duplicates="error").reader().iter_posts([path]))


# -------------------------------------------------------------------------- zero posts
@pytest.fixture
def nothing(tmp_path) -> Path:
    """Inputs without a usable post: a CSV of an unknown layout, a post with empty text."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "export.csv").write_text("tweet_id,user,body\n1,alice,hello #x\n")
    (d / "empty.jsonl").write_text('{"id": 1, "text": " ", "author": "a"}\n')
    return d


def _says_why(err: str, d: Path) -> bool:
    return (
        f"--posts {d}: no post accepted (1 record(s) read, 1 rejected)" in err
        and "rejected for: empty text (1)" in err
        and f"skipped {d / 'export.csv'}: unknown format" in err
    )


@pytest.fixture(scope="module")
def bert(backbone, tmp_path_factory) -> Path:
    import torch

    from ntulm.lm import NTULM, LMConfig

    torch.manual_seed(0)
    cfg = LMConfig.build({"backbone": backbone, "use_ntu": False, "max_length": 16})
    model, _ = NTULM.from_backbone(cfg, None)
    d = tmp_path_factory.mktemp("bert") / "m"
    model.save(d)
    return d


def test_embed_refuses_zero_posts(nothing, bert, tmp_path, capsys):
    out = tmp_path / "e.parquet"
    code, err = _cli(
        capsys, "embed", "--model", str(bert), "--posts", str(nothing), "--out", str(out)
    )
    assert code == 2 and _says_why(err, nothing) and not out.exists()
    rejected = json.loads((tmp_path / "e.rejected.jsonl").read_text())  # beside the output
    assert rejected["problem"] == "empty text"
    code, err = _cli(
        capsys, "embed", "--model", str(bert), "--posts", str(nothing), "--out", str(tmp_path / "s"),
        "--shard", "0/2",
    )  # fmt: skip
    assert code == 2 and _says_why(err, nothing)
    assert not list((tmp_path / "s").glob("part-*"))


def test_finetune_refuses_zero_posts_saying_why(nothing, backbone, tmp_path, capsys):
    out = tmp_path / "m"
    code, err = _cli(
        capsys, "finetune", "--posts", str(nothing), "--no-ntu", "--out", str(out),
        f"backbone={backbone}",
    )  # fmt: skip
    assert code == 2 and _says_why(err, nothing) and "fine-tuning needs at least 2" not in err
    assert json.loads((out / "rejected.jsonl").read_text())["problem"] == "empty text"


def test_evaluate_and_run_refuse_zero_posts_saying_why(nothing, bert, tmp_path, capsys):
    code, err = _cli(
        capsys, "evaluate", "--model", f"bert={bert}", "--posts", str(nothing),
        "--out", str(tmp_path / "ev"), "eval.tasks=[{type: classification, label: community}]",
    )  # fmt: skip
    assert code == 2 and _says_why(err, nothing)
    (tmp_path / "cfg.yaml").write_text(
        f"posts: [{nothing}]\neval: {{tasks: [{{type: hashtag}}]}}\n"
    )
    code, err = _cli(
        capsys, "run", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "r")
    )
    assert code == 2 and _says_why(err, nothing)


def test_a_new_read_leaves_no_earlier_quarantine(lines, tmp_path):
    path = lines("p.jsonl", [{"id": 1, "text": "a", "author": "u"}, "{broken"])
    q = tmp_path / "rejected.jsonl"
    list(ReaderConfig().reader(q).iter_posts([path]))
    assert json.loads(q.read_text())["line"] == 2
    list(ReaderConfig(quarantine=False).reader(q).iter_posts([path]))  # --no-quarantine
    assert not q.exists()
