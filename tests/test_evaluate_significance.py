"""The paired bootstrap on cases whose interval can be derived by hand."""

import numpy as np
import pytest

from ntulm.evaluate.metrics import compute_metrics
from ntulm.evaluate.significance import (
    compare_runs,
    metric_of,
    paired_bootstrap,
    per_post_record,
    retrieval_record,
)


def hits(values):
    return {"metric": "recall@10", "score": [float(v) for v in values]}


def test_two_posts_give_the_binomial_replicates_by_hand():
    # per-post differences d = [1, 0]: a replicate draws 2 posts, so its mean difference is
    # 0 (p = 1/4), 0.5 (p = 1/2) or 1 (p = 1/4); the 95% interval is [0, 1]: no effect
    ci, reps = paired_bootstrap([[(hits([1, 0]), hits([0, 0]))]], n_boot=4000, seed=1,
                                return_replicates=True)  # fmt: skip
    assert ci.diff == 0.5 and ci.baseline == 0.0 and ci.n_posts == 2 and ci.n_pairs == 1
    freq = {v: float(np.mean(reps == v)) for v in (0.0, 0.5, 1.0)}
    assert freq[0.0] == pytest.approx(0.25, abs=0.03) and freq[1.0] == pytest.approx(0.25, abs=0.03)
    assert freq[0.5] == pytest.approx(0.5, abs=0.03) and sum(freq.values()) == 1.0
    assert (ci.low, ci.high, ci.mark) == (0.0, 1.0, "no effect")


def test_a_clear_gain_excludes_zero_and_a_swap_does_not():
    n = 40
    model, base = hits([1] * n), hits([1] * 20 + [0] * 20)
    ci = paired_bootstrap([[(model, base)]], n_boot=2000, seed=0)
    # the replicate is the share of draws among the 20 posts the baseline misses: a binomial
    # mean, 0.5 +- 1.96 * sqrt(0.25 / 40) = [0.345, 0.655] by the normal approximation
    assert ci.diff == 0.5 and ci.mark == "win"
    assert ci.low == pytest.approx(0.345, abs=0.03) and ci.high == pytest.approx(0.655, abs=0.03)
    assert paired_bootstrap([[(base, model)]], n_boot=2000, seed=0).mark == "loss"
    # each model right on 10 posts the other misses: no effect, interval around 0
    a = hits([1] * 10 + [0] * 10 + [1] * 20)
    b = hits([0] * 10 + [1] * 10 + [1] * 20)
    ci = paired_bootstrap([[(a, b)]], n_boot=2000, seed=0)
    assert ci.diff == 0.0 and ci.low < 0 < ci.high and ci.mark == "no effect"
    # seeded: the same seed gives the same interval
    assert paired_bootstrap([[(a, b)]], n_boot=2000, seed=0) == ci


def test_seed_pairings_are_resampled_too():
    # pairing 1: +1 on every post, pairing 2: -1 on every post. Posts add no spread; the two
    # pairings drawn with replacement give -1, 0, +1 (1/4, 1/2, 1/4): interval [-1, 1]
    up = (hits([1] * 30), hits([0] * 30))
    down = (hits([0] * 30), hits([1] * 30))
    ci, reps = paired_bootstrap([[up, down]], n_boot=2000, seed=3, return_replicates=True)
    assert ci.diff == 0.0 and (ci.low, ci.high) == (-1.0, 1.0) and ci.mark == "no effect"
    assert set(np.unique(reps).tolist()) == {-1.0, 0.0, 1.0}
    # a family of tasks averages the tasks' differences
    fam = paired_bootstrap([[up, up], [down, up]], n_boot=200, seed=3)
    assert fam.diff == pytest.approx(0.5) and fam.n_posts == 60


def test_records_recompute_the_reported_metrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    proba = rng.random((300, 5))
    proba[np.arange(300), y] += 0.4  # better than chance
    for metric in ("macro_f1", "precision", "accuracy", "recall@2"):
        rec = per_post_record(metric, y, proba)
        expected = compute_metrics([metric], y, proba)[0][metric]
        assert metric_of(rec) == pytest.approx(expected, abs=1e-12), metric
    assert per_post_record("auc", y, proba) is None
    # a class absent from truth and predictions does not count (as in scikit-learn)
    rec = {"metric": "macro_f1", "y": [0, 0, 2, 2], "pred": [0, 2, 2, 2]}
    assert metric_of(rec) == pytest.approx((2 / 3 + 0.8) / 2)
    # retrieval: queries without a relevant candidate are left out of the mean
    assert metric_of(retrieval_record(np.array([1.0, np.nan, 0.5]))) == 0.75


def test_unpaired_runs_are_refused():
    with pytest.raises(ValueError, match="not paired"):
        paired_bootstrap([[(hits([1, 0, 1]), hits([1, 0]))]])
    a = {"metric": "macro_f1", "y": [0, 1], "pred": [0, 1]}
    b = {"metric": "macro_f1", "y": [1, 0], "pred": [0, 1]}
    with pytest.raises(ValueError, match="different true labels"):
        paired_bootstrap([[(a, b)]])


def test_a_gain_counts_only_where_it_clears_the_baseline_and_every_control():
    n = 60
    outcome = {
        "BERT": [0] * n,
        "NTULM": [1] * 40 + [0] * 20,
        "shuffled": [0] * n,  # cleared
        "mean": [1] * 40 + [0] * 20,  # the control does as well: the gain is not the NTUs'
        "other": [1] * 40 + [0] * 20,
    }
    runs = [
        {"variant": v, "task": t, "seed": s, "finetune_seed": None, "per_post": hits(h)}
        for v, h in outcome.items()
        for t in ("a", "b")
        for s in (1, 2)
    ]
    runs.append({"variant": "nopost", "task": "a", "seed": 1, "finetune_seed": None,
                 "per_post": None})  # fmt: skip
    out = compare_runs(
        runs, "BERT", [*outcome, "nopost"], {"A": ["a"], "F": ["a", "b"]},
        {"NTULM": ["shuffled", "mean"]}, n_boot=300,
    )  # fmt: skip
    cell = out["tasks"]["a"]["NTULM"]
    assert cell["mark"] == "win" and cell["n_pairs"] == 2
    assert cell["vs_controls"]["shuffled"]["mark"] == "win"
    assert cell["vs_controls"]["mean"]["mark"] == "no effect" and cell["counts"] is False
    assert out["tasks"]["a"]["other"]["counts"] is None  # no controls
    assert set(out["families"]) == {"F"} and out["families"]["F"]["NTULM"]["n_posts"] == 2 * n
    assert "nopost" not in out["tasks"]["a"] and any("nopost" in x for x in out["notes"])
    out = compare_runs(
        runs, "BERT", list(outcome), {"A": ["a"]}, {"NTULM": ["shuffled"]}, n_boot=300
    )
    assert out["tasks"]["a"]["NTULM"]["counts"] is True
