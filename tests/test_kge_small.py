"""The small-graph rule of the KGE batch (kge/config.py): warn or scale, recorded."""

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
