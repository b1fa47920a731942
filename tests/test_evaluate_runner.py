"""The downstream MLP and evaluate_task end to end with small embedding functions."""

import logging
import re

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import HashingVectorizer

from ntulm.evaluate import (
    EvalConfig,
    MLPConfig,
    Task,
    classification_task,
    evaluate_task,
    percent_change,
    retrieval_task,
    train_mlp,
)
from ntulm.evaluate.runner import result_line
from ntulm.evaluate.significance import metric_of
from ntulm.posts.formats import parse_jsonl
from ntulm.synthetic import generate_posts

# One thread: tiny matrices run far slower when threads contend on a shared machine.
MLP = {"max_epochs": 40, "patience": 5, "batch_size": 32, "lr": 0.01, "num_threads": 1}
FAST = EvalConfig.build({"mlp": MLP})


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 5)).astype(np.float32) + 3.0 * y[:, None]  # two separated blobs
    return x, y


def test_mlp_learns_a_separable_problem_deterministically():
    x, y = _blobs(300, 0)
    xv, yv = _blobs(60, 1)
    xt, yt = _blobs(100, 2)
    state = torch.get_rng_state()
    a = train_mlp(x, y, xv, yv, 2, FAST.mlp, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    b = train_mlp(x, y, xv, yv, 2, FAST.mlp, seed=7)
    pa, pb = a.predict_proba(xt), b.predict_proba(xt)
    assert (pa.argmax(1) == yt).mean() > 0.95
    assert np.array_equal(pa, pb) and a.best_epoch == b.best_epoch
    assert np.allclose(pa.sum(1), 1.0)
    c = train_mlp(x, y, xv, yv, 2, FAST.mlp, seed=8)
    assert not np.array_equal(pa, c.predict_proba(xt))
    # the hidden layer is as wide as the input (paper, appendix B)
    assert a.model.net[0].weight.shape == (5, 5) and a.model.net[-1].weight.shape == (2, 5)


def test_mlp_early_stopping_keeps_the_best_epoch():
    x, _ = _blobs(200, 0)
    xv, _ = _blobs(40, 1)
    rng = np.random.default_rng(0)
    y, yv = rng.integers(0, 2, 200), rng.integers(0, 2, 40)  # noise: validation loss soon rises
    cfg = MLPConfig(max_epochs=200, patience=2, early_stopping="loss", lr=0.01, num_threads=1)
    fit = train_mlp(x, y, xv, yv, 2, cfg, seed=0)
    losses = [h["val_loss"] for h in fit.history]
    assert len(fit.history) < 200
    assert fit.best_epoch == int(np.argmin(losses)) + 1
    assert len(fit.history) == fit.best_epoch + 2


def test_multilabel_mlp():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0], axis=1).astype(np.float32)  # (N, 2)
    fit = train_mlp(x[:200], y[:200], x[200:250], y[200:250], 2, FAST.mlp, 0, multilabel=True)
    proba = fit.predict_proba(x[250:])
    assert proba.shape == (50, 2) and ((proba >= 0.5) == y[250:]).mean() > 0.9


@pytest.fixture(scope="module")
def corpus():
    return [parse_jsonl(r) for r in generate_posts(n_posts=500, users_per_community=8, seed=2)]


_HASH = HashingVectorizer(n_features=128, alternate_sign=False, norm="l2")


def bag_of_words(posts):
    """A trivial embedding: hashed words; 'overlap' = the post has a hashtag."""
    x = _HASH.transform([p.text for p in posts]).toarray().astype(np.float32)
    return x, np.array([bool(p.hashtags) for p in posts])


def test_evaluate_task_classification_with_overlap_split(corpus):
    task = classification_task(corpus, "community", split_by="author", seed=0)
    result = evaluate_task(task, bag_of_words, FAST, seed=1)
    assert set(result) >= {"metrics", "overlap", "non_overlap", "n", "training", "notes"}
    assert set(result["metrics"]) == {"macro_f1", "accuracy", "precision", "auc"}
    assert result["metrics"]["macro_f1"] > 0.8  # community words are in the text
    n = result["n"]
    assert n["test"] == len(task.test) == n["overlap"] + n["non_overlap"]
    assert n["overlap"] == sum(bool(p.hashtags) for p in task.test)
    assert set(result["overlap"]) == set(result["metrics"])
    assert result["training"]["monitor"] == "val macro_f1"
    assert evaluate_task(task, bag_of_words, FAST, seed=1)["metrics"] == result["metrics"]
    # the per-post record recomputes the headline metric (what the bootstrap resamples)
    assert result["per_post"]["y"].tolist() == task.y_test.tolist()
    assert metric_of(result["per_post"]) == pytest.approx(result["metrics"]["macro_f1"])

    # a text-only baseline, split on the model's overlap flags
    blind = lambda posts: (bag_of_words(posts)[0], np.zeros(len(posts), bool))  # noqa: E731
    base = evaluate_task(task, blind, FAST, seed=1)
    assert base["overlap"] == {} and "n too small" in " ".join(base["notes"])
    flags = bag_of_words(task.test)[1]
    base = evaluate_task(task, blind, FAST, seed=1, overlap=flags)
    change = percent_change(result, base)
    assert change["metrics"]["macro_f1"] == pytest.approx(0.0)  # same embeddings, same seed
    assert set(change["overlap"]) == set(result["metrics"])


def test_result_log_line_names_the_model_and_rounds_to_4_digits(corpus, caplog):
    task = classification_task(corpus, "community", split_by="author", seed=0)
    with caplog.at_level(logging.INFO, logger="ntulm.evaluate.runner"):
        result = evaluate_task(task, bag_of_words, FAST, seed=1, model="hashed words")
    (line,) = [r.getMessage() for r in caplog.records if "community" in r.getMessage()]
    assert line.startswith(f"hashed words | community | seed 1 | n_test {len(task.test)} | ")
    numbers = re.findall(r"\d+\.\d+", line)
    assert len(numbers) == len(result["metrics"]) and all(
        len(x.split(".")[1]) == 4 for x in numbers
    )
    assert f"macro_f1 {result['metrics']['macro_f1']:.4f}" in line
    assert result_line({"task": "t", "metrics": {"auc": None}}) == "model | t | auc n/a"


def test_evaluate_task_retrieval_map(corpus):
    task = retrieval_task(corpus, "community", split_by="author", seed=0, max_test=60)
    classes = {c: i for i, c in enumerate(task.classes)}

    def oracle(posts):  # one-hot of the label: every same-label post ranks first
        x = np.zeros((len(posts), len(classes)), np.float32)
        x[np.arange(len(posts)), [classes[p.labels["community"]] for p in posts]] = 1.0
        return x, np.ones(len(posts), bool)

    result = evaluate_task(task, oracle, FAST)
    assert result["metrics"] == {"map": pytest.approx(1.0)} and result["training"] == {}
    assert result["non_overlap"] == {}
    low = evaluate_task(task, bag_of_words, FAST)
    assert 0.25 < low["metrics"]["map"] < 1.0
    assert len(low["per_post"]["score"]) == len(task.test)
    assert metric_of(low["per_post"]) == pytest.approx(low["metrics"]["map"])


def test_embed_shape_is_checked(corpus):
    task = Task(
        "t", "classification", corpus[:4], [], corpus[4:6], np.array([0, 1, 0, 1]),
        np.zeros(0, int), np.array([0, 1]), ["a", "b"], ["accuracy"],
    )  # fmt: skip
    with pytest.raises(ValueError, match="embed returned"):
        evaluate_task(task, lambda posts: (np.zeros((1, 3)), np.zeros(1, bool)), FAST)
