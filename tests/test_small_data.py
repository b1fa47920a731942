"""Small data: the KGE batch rule (kge/config.py: warn or scale, recorded) and n for every
slice of the report's Table 4."""

import logging

from ntulm.kge.config import KGEConfig


def test_paper_batch_on_a_small_graph_warns_or_scales(caplog):
    paper = KGEConfig()  # batch 100,000, 10 epochs
    with caplog.at_level(logging.WARNING):
        same, rec = paper.for_edges(5_000)
    assert same is paper and rec["optimizer_steps"] == 10 and "warned" in rec["small_graph"]
    assert "only 10 optimizer steps" in caplog.text and "batch_size<=500" in caplog.text
    scaled, rec = KGEConfig(small_graph="scale").for_edges(5_000)
    assert scaled.batch_size == 500 and rec["optimizer_steps"] == 100
    assert rec["small_graph"] == "batch scaled from 100000"
    # never below the chunk of batch negatives; enough steps: untouched, silent
    assert KGEConfig(small_graph="scale").for_edges(900)[0].batch_size == 500
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        cfg, rec = KGEConfig(batch_size=100).for_edges(5_000)
    assert rec == {"batch_size": 100, "optimizer_steps": 500} and not caplog.text
    # the new fields at their defaults do not change the saved config (stage fingerprints)
    assert "min_steps" not in KGEConfig().model_dump()
    assert KGEConfig(min_steps=0).model_dump()["min_steps"] == 0


def test_report_table4_shows_n_for_every_slice():
    from ntulm.pipeline.report import aggregate, table4

    def run(variant, task, f1, n_over, n_non):
        return {
            "variant": variant, "task": task, "seed": 1, "finetune_seed": 13,
            "metrics": {"macro_f1": f1}, "overlap": {"macro_f1": f1} if n_over else {},
            "non_overlap": {"macro_f1": f1} if n_non else {},
            "n": {"test": n_over + n_non, "overlap": n_over, "non_overlap": n_non},
        }  # fmt: skip

    results = {
        "config": {"baseline": "BERT", "variants": [{"name": "BERT"}, {"name": "NTULM"}]},
        "tasks": {
            "party": {"family": "party", "metrics": ["macro_f1"]},
            "irony": {"family": "TweetEval", "metrics": ["macro_f1"]},
            "hate": {"family": "TweetEval", "metrics": ["macro_f1"]},
        },
        "runs": [
            run("BERT", "party", 0.5, 598, 2),
            run("NTULM", "party", 0.6, 598, 2),
            run("BERT", "irony", 0.5, 300, 0),
            run("NTULM", "irony", 0.55, 300, 0),
            run("BERT", "hate", 0.5, 100, 0),
            run("NTULM", "hate", 0.5, 100, 0),
        ],  # fmt: skip
    }
    table = table4(results, aggregate(results))
    assert "| party | NTULM | 20.00% (n=600) | 20.00% (n=598) | 20.00% (n=2) |" in table
    assert "| TweetEval | NTULM | 5.00% (n=400) | 5.00% (n=400) | n/a (n=0) |" in table
