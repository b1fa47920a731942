"""``ntulm run`` end to end on a tiny synthetic corpus with a tiny BERT built in code."""

import importlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from ntulm.cli import build_parser, main
from ntulm.graph import build as graph_build
from ntulm.lm import config as lm_config
from ntulm.pipeline import default_variants, paper_variants
from ntulm.pipeline import run as pipeline_run
from ntulm.posts import PostReader
from ntulm.synthetic import write_corpus


def _tweeteval(root):
    d = root / "irony"
    d.mkdir(parents=True)
    (d / "mapping.txt").write_text("0\tnon_irony\n1\tirony\n")
    for split, n in (("train", 40), ("val", 12), ("test", 16)):
        texts = [
            f"{'love waiting #mondays' if i % 2 else 'nice sunny day #beach'} {i}" for i in range(n)
        ]
        (d / f"{split}_text.txt").write_text("\n".join(texts) + "\n")
        (d / f"{split}_labels.txt").write_text("\n".join(str(i % 2) for i in range(n)) + "\n")


def test_run_end_to_end_and_reuse(tmp_path, backbone, capsys, monkeypatch):
    posts = write_corpus(tmp_path / "posts.jsonl", n_posts=500, users_per_community=8, seed=3)
    _tweeteval(tmp_path / "tweeteval")
    cfg = {
        "name": "tiny",
        "posts": [str(posts)],
        "lm_posts": 200,
        "kge": {"dimension": 16, "num_epochs": 2, "batch_size": 500, "num_batch_negs": 20, "num_uniform_negs": 20},
        "lm": {"backbone": backbone, "max_steps": 4, "max_epochs": 1, "batch_size": 16,
               "head_warmup_steps": 0, "max_length": 32, "progress": False, "eval_max_posts": 40},
        "eval": {
            "mlp": {"max_epochs": 5, "num_threads": 1},
            "tasks": [
                {"type": "classification", "name": "community", "label": "community", "split_by": "author", "min_class_count": 2},
                {"type": "hashtag", "top_k": 5, "per_class": 6, "exclusion": "strict"},
                {"type": "retrieval", "name": "community_map", "label": "community", "max_test": 50},
                {"type": "tweeteval", "root": str(tmp_path / "tweeteval"), "names": ["irony"]},
            ],
        },
        "variants": [v.model_dump(mode="json") for v in paper_variants()] + [
            {"name": "a+h shuffled", "model_of": "NTULM author+hashtag", "control": "shuffled"},
            {"name": "a+h mean", "model_of": "NTULM author+hashtag", "control": "mean"},
        ],
        "seeds": [1, 2],
        "isolate_stages": False,  # quicker here; test_pipeline_memory.py runs the workers
    }  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    reads = []  # the corpus files are read once, into the table the graph and tasks share
    real = graph_build.write_posts_table
    monkeypatch.setattr(
        graph_build, "write_posts_table", lambda *a, **k: reads.append(a[2]) or real(*a, **k)
    )
    assert main(["run", "--config", str(tmp_path / "cfg.yaml"), "--out", str(out), "-q"]) == 0
    first = capsys.readouterr().out
    assert reads == [out / "posts"]
    assert "Table 2" in first and "Traceback" not in first
    res = json.loads((out / "results.json").read_text())
    variants = {r["variant"] for r in res["runs"]}
    assert variants == {
        "BERT",
        "NTULM author",
        "NTULM hashtag",
        "NTULM author+hashtag",
        "BERT-post-concat",
        "a+h shuffled",
        "a+h mean",
    }
    assert len(res["runs"]) == 7 * 4 * 2  # variants x tasks x seeds
    assert set(res["lm"]) == {"BERT", "NTULM author", "NTULM hashtag", "NTULM author+hashtag"}
    assert all(r["n"]["overlap"] + r["n"]["non_overlap"] == r["n"]["test"] for r in res["runs"])
    # the hashtag task's validation and test posts gave no edges, nor (test author, tag) pairs
    excluded = (out / "exclude_posts.txt").read_text().split()
    ht = res["tasks"]["hashtag"]
    assert (
        excluded and res["graph"]["posts_excluded"] == len(excluded) == ht["n_val"] + ht["n_test"]
    )
    pairs = (out / "exclude_edges.jsonl").read_text().splitlines()
    assert pairs and res["graph"]["exclude_edge_pairs"] == len(pairs) == ht["graph_excluded_pairs"]
    # every variant has an interval against BERT; the controlled model also against its controls
    sig = res["significance"]
    for task in res["tasks"]:
        row = sig["tasks"][task]
        assert set(row) == variants - {"BERT"}, task
        assert all(c["low"] <= c["diff"] <= c["high"] and c["n_pairs"] == 2 for c in row.values())
        assert set(row["NTULM author+hashtag"]["vs_controls"]) == {"a+h shuffled", "a+h mean"}
        assert isinstance(row["NTULM author+hashtag"]["counts"], bool)
        assert row["NTULM author"]["counts"] is None  # no controls of its own
    assert "per_post" not in res["runs"][0]
    assert pq.read_table(out / "predictions.parquet").num_rows == len(res["runs"])
    # the controls embed other NTUs than the model's own, through the same model
    with (
        np.load(_cached(out, "a_h_mean", "community")) as c,
        np.load(_cached(out, "ntulm_author_hashtag", "community")) as m,
    ):
        assert c["test"].shape == m["test"].shape and not np.allclose(c["test"], m["test"])
    report = (out / "report.md").read_text()
    for part in ("Table 2", "Table 3", "Table 4", "Perplexity bits", "TweetEval", "| overall |",
                 "## Significance", "## Negative controls", "| strict ("):  # fmt: skip
        assert part in report
    assert (out / "improvement.png").stat().st_size > 0 and (
        out / "perplexity.png"
    ).stat().st_size > 0
    # a second run reuses every stage and every task's cached embeddings (none is encoded
    # again), and gives the same numbers
    encoded = []
    # the run imports the encoder where it encodes (its own process never loads transformers
    # when it has workers): watch the function in its module
    encode_mod = importlib.import_module("ntulm.lm.encode")
    real_encode = encode_mod.encode
    monkeypatch.setattr(
        encode_mod, "encode", lambda *a, **k: encoded.append(1) or real_encode(*a, **k)
    )
    assert main(["run", "--config", str(tmp_path / "cfg.yaml"), "--out", str(out), "-q"]) == 0
    second = capsys.readouterr().out
    assert "stages run: none;" in second and len(reads) == 1
    assert encoded == []
    res2 = json.loads((out / "results.json").read_text())
    assert [r["metrics"] for r in res2["runs"]] == [r["metrics"] for r in res["runs"]]
    assert res["embed_dtype"] == "float32"
    # embed_dtype auto resolves on the machine that runs: where bf16 is emulated, float32, so
    # the float32 run's cached embeddings are reused (the key holds the resolved dtype)
    monkeypatch.setattr(lm_config, "native_bf16", lambda device="cpu": False)
    cfg["eval"]["embed_dtype"] = "auto"
    (tmp_path / "cfg_auto.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", "--config", str(tmp_path / "cfg_auto.yaml"), "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    assert encoded == []
    res_auto = json.loads((out / "results.json").read_text())
    assert res_auto["embed_dtype"] == "float32"
    assert [r["metrics"] for r in res_auto["runs"]] == [r["metrics"] for r in res["runs"]]
    monkeypatch.setattr(lm_config, "native_bf16", lambda device="cpu": True)
    assert pipeline_run.Pipeline(pipeline_run.PipelineConfig.build(cfg), out).embed_dtype == (
        "bfloat16"
    )
    del cfg["eval"]["embed_dtype"]
    # --prune-embeddings: a run of BERT alone keeps BERT's cache files (read, not re-encoded)
    # and deletes every other variant's, and an old-layout file it did not read
    files = sorted((out / "embeddings").glob("*/*.npz"))
    bert = [f for f in files if f.parent.name == "bert"]
    assert len(files) == 7 * 4 and len(bert) == 4
    (out / "embeddings" / "bert" / "community.npz").write_bytes(b"stale")
    only_bert = {**cfg, "variants": [{"name": "BERT", "use_ntu": False}]}
    (tmp_path / "cfg_bert.yaml").write_text(yaml.safe_dump(only_bert))
    argv = ["run", "--config", str(tmp_path / "cfg_bert.yaml"), "--out", str(out), "-q"]
    assert main([*argv, "--prune-embeddings"]) == 0
    capsys.readouterr()
    assert encoded == []
    assert sorted((out / "embeddings").glob("*/*.npz")) == bert
    assert [d.name for d in (out / "embeddings").iterdir()] == ["bert"]  # empty dirs removed
    pruned = json.loads((out / "results.json").read_text())["stages"]["pruned"]
    assert pruned["files"] == 7 * 4 - 4 + 1 and pruned["bytes"] > 0
    assert main(argv) == 0 and encoded == []  # what it kept is still the cache
    capsys.readouterr()
    # graph/ and kge/ copied into another output directory are reused there (the hashtag
    # task's exclusion counts by content, not by the path of its file)
    other = tmp_path / "other"
    for stage in ("graph", "kge"):
        shutil.copytree(out / stage, other / stage)
    cfg["eval"]["tasks"] = cfg["eval"]["tasks"][1:2]  # the hashtag task alone: quicker
    cfg["variants"] = [{"name": "BERT", "use_ntu": False}]
    (tmp_path / "cfg3.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", "--config", str(tmp_path / "cfg3.yaml"), "--out", str(other), "-q"]) == 0
    assert "reused: graph, kge" in capsys.readouterr().out


def test_run_config_errors(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(
        "posts: [x]\nbaseline: nope\neval: {tasks: [{type: hashtag}]}\n"
    )
    assert main(["run", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "baseline: 'nope' is not a variant" in err and "Traceback" not in err


def test_quickstart_with_a_backbone(tmp_path, backbone, capsys):
    argv = ["quickstart", "--out", str(tmp_path / "qs"), "--posts", "400", "-q", f"lm.backbone={backbone}",
            "lm.max_steps=3", "lm.head_warmup_steps=0", "lm_posts=150", "kge.dimension=8", "kge.num_epochs=1",
            "eval.mlp.max_epochs=3", "eval.mlp.num_threads=1", "seeds=[1]"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "synthetic corpus" in out and "Table 2" in out and "NTULM author+hashtag" in out
    assert f"everything this quickstart wrote is under {(tmp_path / 'qs').resolve()}" in out
    res = json.loads((tmp_path / "qs" / "run" / "results.json").read_text())
    assert any(r["n"]["non_overlap"] > 0 for r in res["runs"])  # newcomers form a non-overlap slice
    # per-task embeddings carry the post id of every row, and the ids are the corpus's posts
    corpus = {p.id for p, _ in PostReader().iter_posts([tmp_path / "qs" / "posts.jsonl.gz"])}
    with np.load(_cached(tmp_path / "qs" / "run", "ntulm_author", "community")) as z:
        for split in ("train", "val", "test"):
            ids = z[f"{split}_ids"].tolist()
            assert len(ids) == len(z[split]) > 0 and len(set(ids)) == len(ids)
            assert set(ids) <= corpus


def test_default_variants_recommend_the_per_type_warm_up_model_with_the_author_vector():
    """`ntulm run`'s default: the recommended variant appends the author's vector to a model
    fine-tuned with per-type NTU tokens, the NTU warm-up and the NTU learning rate; the text-only
    model with the same vector runs beside it."""
    from ntulm.pipeline.config import RECOMMENDED, PipelineConfig

    task = {"type": "classification", "name": "c", "label": "community"}
    cfg = PipelineConfig(posts=["x"], eval={"tasks": [task]})
    by_name = {v.name: v for v in cfg.variants}
    rec = by_name[RECOMMENDED]
    assert rec.ntu_types == ["author"] and rec.post_concat_of
    model = by_name[rec.post_concat_of]
    assert model.use_ntu
    assert model.lm == {"ntu_tokens": "per_type", "ntu_warmup": True, "ntu_lr": 5.0e-4}
    lm = cfg.lm_config(model, 13)  # what its fine-tune gets: the run's lm section + the variant's
    assert lm.use_ntu and lm.ntu_tokens == "per_type" and lm.ntu_warmup and lm.ntu_lr == 5.0e-4
    assert set(model.ntu_types) == {"author", "hashtag"}
    text = by_name["BERT-post-concat (author)"]
    assert not by_name[text.post_concat_of].use_ntu and text.ntu_types == ["author"]
    assert [v.name for v in cfg.variants[:5]] == [v.name for v in paper_variants()]


def test_quickstart_default_output_is_ignored_by_git():
    """`ntulm quickstart` run from a checkout writes under a directory git ignores."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    out = build_parser().parse_args(["quickstart"]).out
    assert out == "ntulm-quickstart"
    for path in (f"{out}/run/report.md", f"{out}/posts.jsonl.gz"):
        probe = subprocess.run(["git", "check-ignore", "-q", path], cwd=root)
        assert probe.returncode == 0, f"{path} is not ignored by .gitignore"


def test_evaluate_saved_models_matches_run(tmp_path, backbone, capsys):
    """`ntulm evaluate` on the models `ntulm run` saved gives the run's numbers."""
    posts = write_corpus(tmp_path / "posts.jsonl", n_posts=300, users_per_community=6, seed=5)
    _tweeteval(tmp_path / "tweeteval")
    tasks = [
        {"type": "classification", "name": "community", "label": "community", "split_by": "author", "min_class_count": 2},
        {"type": "tweeteval", "root": str(tmp_path / "tweeteval"), "names": ["irony"]},
    ]  # fmt: skip
    cfg = {
        "posts": [str(posts)],
        "lm_posts": 100,
        "kge": {"dimension": 8, "num_epochs": 1, "batch_size": 500, "num_batch_negs": 10, "num_uniform_negs": 10},
        "lm": {"backbone": backbone, "max_steps": 2, "batch_size": 16, "head_warmup_steps": 0,
               "max_length": 32, "progress": False, "eval_max_posts": 20},
        "eval": {"mlp": {"max_epochs": 4, "num_threads": 1}, "tasks": tasks},
        "seeds": [4],
        "isolate_stages": False,  # quicker here; test_pipeline_memory.py runs the workers
    }  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["run", "--config", str(tmp_path / "cfg.yaml"), "--out", str(run), "-q"]) == 0
    capsys.readouterr()

    # a pooling variant over an existing model: every stage reused, only its embeddings are new
    first = json.loads((run / "results.json").read_text())
    cfg["variants"] = [v.model_dump(mode="json") for v in default_variants()] + [
        {"name": "NTULM a+h mean+ntu", "model_of": "NTULM author+hashtag", "pooling": "mean+ntu"}
    ]
    (tmp_path / "cfg2.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", "--config", str(tmp_path / "cfg2.yaml"), "--out", str(run), "-q"]) == 0
    assert "stages run: none;" in capsys.readouterr().out
    second = json.loads((run / "results.json").read_text())
    pooled = [r for r in second["runs"] if r["variant"] == "NTULM a+h mean+ntu"]
    assert len(pooled) == 2 and all(r["metrics"] for r in pooled)
    assert [r["metrics"] for r in second["runs"] if r["variant"] != "NTULM a+h mean+ntu"] == [
        r["metrics"] for r in first["runs"]
    ]
    assert second["config"]["variants"][-1]["use_ntu"] is True  # taken from the model's variant
    assert "mean+ntu pooling | (= NTULM author+hashtag)" in (run / "report.md").read_text()
    bad = {
        **cfg,
        "variants": cfg["variants"][:1]
        + [{"name": "x", "model_of": "BERT", "pooling": "mean+ntu"}],
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["run", "--config", str(tmp_path / "bad.yaml"), "--out", str(run), "-q"]) == 2
    assert "pooling 'mean+ntu' needs an NTU model" in capsys.readouterr().err

    out = tmp_path / "ev"
    argv = ["evaluate", "--config", str(tmp_path / "cfg.yaml"), "--out", str(out), "-q",
            "--model", f"BERT={run / 'lm' / 'bert'}",
            "--model", f"NTULM author+hashtag={run / 'lm' / 'ntulm_author_hashtag'}",
            "--post-concat", "BERT", "--ntu", str(run / "kge"), "--posts", str(posts)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Table 2" in printed and "Models (saved)" in (out / "report.md").read_text()
    mine = json.loads((out / "results.json").read_text())
    theirs = json.loads((run / "results.json").read_text())
    assert {r["variant"] for r in mine["runs"]} == {
        "BERT",
        "NTULM author+hashtag",
        "BERT-post-concat",
    }
    key = lambda r: (r["variant"], r["task"])  # noqa: E731
    ran = {key(r): r for r in theirs["runs"]}
    for r in mine["runs"]:
        assert r["metrics"] == ran[key(r)]["metrics"], key(r)
        assert r["n"] == ran[key(r)]["n"], key(r)
    assert mine["config"]["baseline"] == "BERT"
    # --prune-embeddings: BERT alone again keeps BERT's cache files, the other two variants' go
    kept = sorted((out / "embeddings" / "bert").glob("*.npz"))
    assert len(kept) == 2 and len(list((out / "embeddings").glob("*/*.npz"))) == 6
    one = [*argv[:6], "--model", f"BERT={run / 'lm' / 'bert'}", "--posts", str(posts)]
    assert main([*one, "--prune-embeddings"]) == 0
    capsys.readouterr()
    assert sorted((out / "embeddings").glob("*/*.npz")) == kept
    assert json.loads((out / "results.json").read_text())["stages"]["pruned"]["files"] == 4

    # the hashtag task is refused for NTU models: their graph cannot show its test posts excluded
    (tmp_path / "ht.yaml").write_text(yaml.safe_dump({"eval": {"tasks": [{"type": "hashtag"}]}}))
    argv = ["evaluate", "--config", str(tmp_path / "ht.yaml"), "--out", str(tmp_path / "ht"),
            "--model", str(run / "lm" / "ntulm_author"), "--posts", str(posts)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "hashtag task" in err and "Traceback" not in err
    # a directory that is not a model, named with file and problem
    argv = ["evaluate", "--out", str(tmp_path / "x"), "--model", f"M={tmp_path}"]
    assert main(argv) == 2
    assert "is not an `ntulm finetune` directory" in capsys.readouterr().err


def _cached(run: Path, variant: str, task: str) -> Path:
    """The one cached embedding file of ``task`` under ``variant`` (slugs) in the run ``run``."""
    files = list((run / "embeddings" / variant).glob(f"{task}.*.npz"))
    assert len(files) == 1, files
    return files[0]


def _assert_shuffled_concat(run: Path, task: str, model: str, concat: str, control: str) -> None:
    """``concat`` (post_concat_of ``model``) keeps the model's embedding and appends rows; its
    shuffled ``control`` feeds the model other posts' NTUs and appends the same rows, paired with
    other posts. ``task``: the task's slug."""
    from ntulm.pipeline.run import _slug

    with (
        np.load(_cached(run, _slug(model), task)) as m,
        np.load(_cached(run, _slug(concat), task)) as c,
        np.load(_cached(run, _slug(control), task)) as s,
    ):
        h = m["test"].shape[1]
        assert np.array_equal(c["test"][:, :h], m["test"])
        assert not np.allclose(s["test"][:, :h], m["test"])  # the model is fed other NTUs too
        own, other = c["test"][:, h:], s["test"][:, h:]
        # the appended rows of other posts: the same rows, not the posts' own
        assert sorted(map(tuple, own.tolist())) == sorted(map(tuple, other.tolist()))
        assert not np.isclose(own, other).all(axis=1).all()


def test_design_run_reads_no_test_post_and_post_concat_of_an_ntu_model(
    tmp_path, backbone, capsys, monkeypatch
):
    """`eval.design`: every task scored on half its validation split, no test post encoded;
    post_concat_of an NTU model appends e_ntu (its control substitutes the appended rows too)."""
    from ntulm.pipeline import PipelineConfig
    from ntulm.pipeline import run as run_mod
    from ntulm.pipeline.run import Pipeline

    posts = write_corpus(tmp_path / "posts.jsonl", n_posts=300, users_per_community=6, seed=5)
    _tweeteval(tmp_path / "tweeteval")
    cfg = {
        "posts": [str(posts)],
        "lm_posts": 100,
        "kge": {"dimension": 8, "num_epochs": 1, "batch_size": 500, "num_batch_negs": 10, "num_uniform_negs": 10},
        "lm": {"backbone": backbone, "max_steps": 2, "batch_size": 16, "head_warmup_steps": 0,
               "max_length": 32, "progress": False, "eval_max_posts": 20},
        "eval": {"design": True, "mlp": {"max_epochs": 4, "num_threads": 1}, "tasks": [
            {"type": "classification", "name": "community", "label": "community", "split_by": "author", "min_class_count": 2},
            {"type": "tweeteval", "root": str(tmp_path / "tweeteval"), "names": ["irony"]},
        ]},
        "variants": [
            {"name": "BERT", "use_ntu": False},
            {"name": "N", "ntu_types": ["author", "hashtag"]},
            {"name": "N + e", "post_concat_of": "N", "ntu_types": ["author", "hashtag"]},
            {"name": "N + e mean", "post_concat_of": "N", "ntu_types": ["author", "hashtag"], "control": "mean"},
            # appending the author alone; its control feeds the model a+h rows, same permutation
            {"name": "N + a", "post_concat_of": "N", "ntu_types": ["author"]},
            {"name": "N + a shuffled", "post_concat_of": "N", "ntu_types": ["author"], "control": "shuffled"},
            # the author's and the hashtags' e_ntu side by side, and its control
            {"name": "N + a|h", "post_concat_of": "N", "ntu_types": ["author", "hashtag"], "concat": "per_type"},
            {"name": "N + a|h shuffled", "post_concat_of": "N", "ntu_types": ["author", "hashtag"],
             "concat": "per_type", "control": "shuffled"},
            # the same with the hashtags' block weighted (concat_scale), and its control
            {"name": "N + a|h/4", "post_concat_of": "N", "ntu_types": ["author", "hashtag"],
             "concat": "per_type", "concat_scale": {"hashtag": 0.25}},
            {"name": "N + a|h/4 shuffled", "post_concat_of": "N", "ntu_types": ["author", "hashtag"],
             "concat": "per_type", "concat_scale": {"hashtag": 0.25}, "control": "shuffled"},
            # a per-type model's control: its (N, K, D) rows under the same permutation
            {"name": "T", "ntu_types": ["author", "hashtag"], "lm": {"ntu_tokens": "per_type"}},
            {"name": "T + a", "post_concat_of": "T", "ntu_types": ["author"]},
            {"name": "T + a shuffled", "post_concat_of": "T", "ntu_types": ["author"], "control": "shuffled"},
        ],
        "seeds": [4],
        "isolate_stages": False,  # the test watches encode() in this process
    }  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    encoded: set[str] = set()
    encode_mod = importlib.import_module("ntulm.lm.encode")  # imported where it encodes
    real = encode_mod.encode
    monkeypatch.setattr(
        encode_mod,
        "encode",
        lambda m, ps, **k: encoded.update(p.id for p in ps) or real(m, ps, **k),
    )
    run = tmp_path / "run"
    assert main(["run", "--config", str(tmp_path / "cfg.yaml"), "--out", str(run), "-q"]) == 0
    capsys.readouterr()
    # the same tasks without design mode: their test posts were never encoded
    full = PipelineConfig.from_sources(tmp_path / "cfg.yaml", ["eval.design=false"])
    p = Pipeline(full, run, progress=False)
    tasks = p.build_tasks(p.read_corpus())
    test_ids = {q.id for _, t in tasks for q in t.test}
    val_ids = {q.id for _, t in tasks for q in t.val}
    # (a validation half by author may drop a class with one author: not every val post)
    assert test_ids and not test_ids & encoded and len(val_ids & encoded) > len(val_ids) // 2
    # the design run fine-tuned on the sample the test run draws: its models are the test run's
    assert p.lm_held == test_ids | val_ids
    assert not {q.id for q in run_mod.finetune_sample(p.read_corpus(), tasks, full)} & (
        test_ids | val_ids
    )
    res = json.loads((run / "results.json").read_text())
    assert all(n.endswith("(validation)") for n in res["tasks"])
    assert "Design run" in (run / "report.md").read_text()
    f = run_mod._slug("community (validation)")
    with (
        np.load(_cached(run, run_mod._slug("N"), f)) as n,
        np.load(_cached(run, run_mod._slug("N + e"), f)) as ne,
        np.load(_cached(run, run_mod._slug("N + e mean"), f)) as nm,
    ):
        h, d = n["test"].shape[1], 8
        assert ne["test"].shape[1] == nm["test"].shape[1] == h + d
        assert np.array_equal(ne["test"][:, :h], n["test"])  # the NTU model's own embedding
        assert not np.allclose(nm["test"][:, :h], n["test"])  # the control feeds the mean ...
        assert np.allclose(nm["test"][:, h:], nm["test"][0, h:])  # ... and appends it
    sig = res["significance"]["tasks"]["community (validation)"]
    assert set(sig["N + e"]["vs_controls"]) == {"N + e mean"}
    assert set(sig["N + a"]["vs_controls"]) == {"N + a shuffled"}
    _assert_shuffled_concat(run, f, "N", "N + a", "N + a shuffled")
    # a per-type model's control: its (N, K, D) rows under the same permutation
    assert set(sig["T + a"]["vs_controls"]) == {"T + a shuffled"}
    _assert_shuffled_concat(run, f, "T", "T + a", "T + a shuffled")
    assert set(sig["N + a|h"]["vs_controls"]) == {"N + a|h shuffled"}
    with (
        np.load(_cached(run, run_mod._slug("N + a"), f)) as na,
        np.load(_cached(run, run_mod._slug("N + a|h"), f)) as nah,
        np.load(_cached(run, run_mod._slug("N + a|h shuffled"), f)) as nahs,
    ):
        h = na["test"].shape[1] - d
        assert nah["test"].shape[1] == h + 2 * d  # two appended slots, not their mean
        assert np.array_equal(nah["test"][:, : h + d], na["test"])  # text, then the author's
        hashtag_slot = nah["test"][:, h + d :]
        assert not np.allclose(hashtag_slot, nah["test"][:, h : h + d])
        # the control: both slots of one other post (the author slot is N + a shuffled's)
        with np.load(_cached(run, run_mod._slug("N + a shuffled"), f)) as ns:
            assert np.array_equal(nahs["test"][:, h : h + d], ns["test"][:, h:])
        own_rows = sorted(map(tuple, nah["test"][:, h:].tolist()))
        assert own_rows == sorted(map(tuple, nahs["test"][:, h:].tolist()))
        # concat_scale: the hashtags' block a quarter, the text and the author's block as they were
        with (
            np.load(_cached(run, run_mod._slug("N + a|h/4"), f)) as w,
            np.load(_cached(run, run_mod._slug("N + a|h/4 shuffled"), f)) as ws,
        ):
            assert np.array_equal(w["test"][:, : h + d], nah["test"][:, : h + d])
            assert np.allclose(w["test"][:, h + d :], 0.25 * hashtag_slot)
            assert np.array_equal(ws["test"][:, : h + d], nahs["test"][:, : h + d])
            assert np.allclose(ws["test"][:, h + d :], 0.25 * nahs["test"][:, h + d :])
    assert set(sig["N + a|h/4"]["vs_controls"]) == {"N + a|h/4 shuffled"}
    # the test run of the same config reuses every fine-tune of the design run
    assert main(["run", "--config", str(tmp_path / "cfg.yaml"), "--out", str(run), "-q",
                 "eval.design=false"]) == 0  # fmt: skip
    capsys.readouterr()
    stages = json.loads((run / "results.json").read_text())["stages"]
    assert "finetune N" in " ".join(stages["reused"]), stages
    assert not [s for s in stages["ran"] if s.startswith("finetune")], stages


def test_embed_device_resolves_and_keys_the_embedding_cache_only_off_the_cpu(tmp_path, monkeypatch):
    import torch

    from ntulm.artifacts import fingerprint
    from ntulm.errors import ConfigError
    from ntulm.evaluate.tasks import Task
    from ntulm.lm.config import resolve_device
    from ntulm.posts import Post

    base = {"name": "d", "posts": ["p.jsonl"], "eval": {"tasks": [{"type": "hashtag"}]}}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    cpu = pipeline_run.Pipeline(pipeline_run.PipelineConfig.build(base), tmp_path / "a")
    assert cpu.embed_device == "cpu"
    wants = {**base, "eval": {**base["eval"], "embed_device": "cuda"}}
    with pytest.raises(ConfigError, match="eval.embed_device: cuda, but torch sees no CUDA"):
        pipeline_run.Pipeline(pipeline_run.PipelineConfig.build(wants), tmp_path / "b")
    with pytest.raises(ConfigError, match="--device: 'tpu' is not one of"):
        resolve_device("tpu", "--device")
    posts = [Post(id=str(i), text=f"post {i}") for i in range(3)]
    y = np.zeros(1, dtype=np.int64)
    task = Task(
        "t", "classification", posts[:1], posts[1:2], posts[2:], y, y, y, ["a"], ["macro_f1"]
    )
    v = cpu.cfg.variants[0]
    path, key = cpu._embedding_file(v, "fp", task)
    # on the CPU the key is the one from before embed_device existed, so old caches are reused
    old = [
        "fp",
        v.model_dump(mode="json"),
        cpu.embed_dtype,
        "t",
        pipeline_run.task_content_key(task),
    ]
    assert key == fingerprint(old)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(lm_config, "native_bf16", lambda device="cpu": device == "cuda")
    gpu = pipeline_run.Pipeline(pipeline_run.PipelineConfig.build(base), tmp_path / "c")
    assert gpu.embed_device == "cuda" and gpu.embed_dtype == "float32"  # the config's dtype
    gpu_path, gpu_key = gpu._embedding_file(v, "fp", task)
    assert gpu_key != key and gpu_path != path  # GPU numbers never pass for CPU ones
    assert path.name == f"t.{key}.npz" and gpu_path.name == f"t.{gpu_key}.npz"
    # one file per fingerprint: another model's (another fine-tuning seed's) sits beside it
    other, other_key = cpu._embedding_file(v, "fp2", task)
    assert other_key != key and other.parent == path.parent and other != path
    # the earlier layout (<task>.npz, one model at a time) is used where it holds this key
    legacy = path.parent / "t.npz"
    legacy.parent.mkdir(parents=True)
    np.savez(legacy, fingerprint=np.array(key), test_ids=np.array([]))
    assert cpu._embedding_file(v, "fp", task) == (legacy, key)
    assert cpu._embedding_file(v, "fp2", task) == (other, other_key)
    auto = {**base, "eval": {**base["eval"], "embed_dtype": "auto"}}
    assert (
        pipeline_run.Pipeline(pipeline_run.PipelineConfig.build(auto), tmp_path / "d").embed_dtype
        == "bfloat16"
    )
