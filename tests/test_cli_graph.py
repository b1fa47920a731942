"""The CLI end to end on tiny data: outputs, exit codes, one-line errors and no tracebacks."""

import json

from ntulm.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_build_graph_and_ntu_stats(capsys, lines, tmp_path):
    posts = lines(
        "p.jsonl",
        [
            {"id": 1, "text": "hello #a #b @x", "author": "u"},
            "{broken",
            {"id": 2, "text": "again #a", "author": "v", "favorited_by": ["u"]},
        ],
    )
    code, out, _ = run(
        capsys,
        "build-graph",
        "--posts",
        str(posts),
        "--out",
        str(tmp_path / "g"),
        "-q",
        "weighting=dedup",
    )
    assert code == 0
    assert "posts: read 3, accepted 2, rejected 1" in out and "rejected.jsonl" in out
    assert "nodes: 3 users, 2 hashtags" in out
    assert json.loads((tmp_path / "g" / "config.json").read_text())["weighting"] == "dedup"
    rejected = json.loads((tmp_path / "g" / "rejected.jsonl").read_text())
    assert rejected["line"] == 2 and rejected["raw"] == "{broken"
    code, out, _ = run(
        capsys, "ntu-stats", "--posts", str(posts), "--graph", str(tmp_path / "g"), "--json", "-q"
    )
    assert code == 0 and json.loads(out)["hashtag"]["pct_ntu_posts_in_graph"] == 100.0


def test_strict_and_errors_exit_2_with_one_line(capsys, lines, tmp_path):
    posts = lines("p.jsonl", [{"id": 1, "text": "ok", "author": "u"}, "{broken"])
    code, _, err = run(
        capsys, "build-graph", "--posts", str(posts), "--out", str(tmp_path / "g"), "--strict", "-q"
    )
    assert code == 2 and err.strip().endswith(
        f"{posts}:2: malformed JSON: Expecting property name enclosed in double quotes at column 2"
    )
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(
        capsys, "build-graph", "--posts", str(tmp_path / "missing"), "--out", str(tmp_path / "g")
    )
    assert code == 2 and "missing: no such file or directory" in err
    code, _, err = run(
        capsys,
        "build-graph",
        "--posts",
        str(posts),
        "--out",
        str(tmp_path / "g"),
        "min_user_hashtags=-1",
    )
    assert code == 2 and "min_user_hashtags: Input should be greater than or equal to 0" in err
    code, _, err = run(
        capsys,
        "build-graph",
        "--posts",
        str(posts),
        "--out",
        str(tmp_path / "g"),
        "--config",
        str(tmp_path / "nope.yaml"),
    )
    assert code == 2 and "nope.yaml: cannot read config" in err
    code, _, err = run(
        capsys, "ntu-stats", "--posts", str(posts), "--graph", str(tmp_path / "nothing")
    )
    assert code == 2 and "not a directory (expected a graph artifact)" in err


def test_config_file(capsys, lines, tmp_path):
    posts = lines("p.jsonl", [{"id": 1, "text": "#a #b", "author": "u"}])
    cfg = tmp_path / "graph.yaml"
    cfg.write_text("relations: [co_mentioned]\n")
    code, out, _ = run(
        capsys,
        "build-graph",
        "--posts",
        str(posts),
        "--out",
        str(tmp_path / "g"),
        "--config",
        str(cfg),
        "-q",
    )
    assert code == 0 and "nodes: 0 users, 0 hashtags" in out
    cfg.write_text("relations: [\n")
    code, _, err = run(
        capsys,
        "build-graph",
        "--posts",
        str(posts),
        "--out",
        str(tmp_path / "g"),
        "--config",
        str(cfg),
    )
    assert code == 2 and "graph.yaml: line" in err and "invalid YAML" in err


def test_unwritable_output_is_one_line(capsys, lines, tmp_path):
    posts = lines("p.jsonl", [{"id": 1, "text": "#a", "author": "u"}])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(
        capsys, "build-graph", "--posts", str(posts), "--out", str(blocker / "g"), "-q"
    )
    assert code == 2 and "error:" in err and len(err.strip().splitlines()) == 1


def test_help_and_graph_commands_do_not_import_torch():
    """`ntulm --help` and the parser of every command stay instant: torch and transformers
    (seconds of start-up) are imported only by the commands that run a model."""
    import subprocess
    import sys

    code = (
        "import sys; from ntulm.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_lm_package_keeps_its_public_functions():
    """`ntulm.lm` re-exports lazily; importing the submodule `ntulm.lm.encode` must not turn
    `ntulm.lm.encode` (the function) into the module."""
    import subprocess
    import sys

    code = (
        "import ntulm.lm.encode, ntulm.lm.train; from ntulm.lm import encode, finetune, NTULM; "
        "import types; print(isinstance(encode, types.FunctionType), callable(finetune), "
        "NTULM.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "NTULM"]


def test_no_post_accepted_exits_non_zero_saying_why(capsys, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "export.csv").write_text("tweet_id,user,body\n1,alice,hello #x\n")
    (d / "broken.jsonl").write_text('{"id": 1, "text": "", "author": "a"}\n')
    (d / "dangling.jsonl").symlink_to(tmp_path / "nowhere")
    code, out, err = run(
        capsys, "build-graph", "--posts", str(d), "--out", str(tmp_path / "g"), "-q"
    )
    assert code == 2 and not (tmp_path / "g" / "DONE.json").exists()
    assert "no post accepted (1 record(s) read, 1 rejected)" in err
    assert "rejected for: empty text (1)" in err
    assert f"skipped {d / 'export.csv'}: unknown format" in err
    assert f"skipped {d / 'dangling.jsonl'}: dangling symlink" in err
    assert "the formats read are jsonl, twitter_v1, twitter_v2, ira_csv" in err
    (tmp_path / "cfg.yaml").write_text(f"posts: [{d}]\neval: {{tasks: [{{type: hashtag}}]}}\n")
    code, out, err = run(
        capsys, "run", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "r"), "-q"
    )
    assert code == 2 and "no post accepted" in err and "export.csv: unknown format" in err


def test_an_empty_graph_says_so(capsys, lines, tmp_path, caplog):
    posts = lines("p.jsonl", [{"id": 1, "text": "no tags here", "author": "a"}])
    code, out, _ = run(capsys, "build-graph", "--posts", str(posts), "--out", str(tmp_path / "g"))
    assert code == 0 and "edges: none (0 user-hashtag engagements before the filters" in out
    assert "the posts carry no hashtag a relation can join" in caplog.text
