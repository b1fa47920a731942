"""The evaluation protocol's rules that are not a task builder: which protocols exist, and the
task on which design decisions are made.

- ``PROTOCOLS``: ``paper`` (random splits by post or author, as in the paper) and ``temporal``
  (the graph, NTU embeddings and fine-tuning sample from posts before a cutoff, corpus tasks
  validated and tested after it: :mod:`ntulm.evaluate.temporal`); ``PipelineConfig.protocol``
  takes one of them.
- :func:`validation_task`: choices of design (pooling, fusion, hyperparameters; the diagnostics
  in ``benchmarks/diagnose_ntu.py``) are made on the validation split only, never on the test
  split the report is scored on. It halves the validation split, by the task's split unit and
  stratified by label: one half early-stops the MLP, the other is scored.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ntulm.evaluate.splits import split_indices
from ntulm.evaluate.tasks import Task

PROTOCOLS = ("paper", "temporal")


def validation_task(task: Task, seed: int = 13) -> Task:
    """``task`` with its test split replaced by half of its validation split (the other half
    validates); the test posts are not read. Retrieval tasks have no validation split: their
    design queries are a sample of the training posts, as many as the test posts."""
    if task.kind == "retrieval":
        n = min(len(task.test), len(task.train))
        keep = np.sort(np.random.default_rng(seed).choice(len(task.train), n, replace=False))
        return dataclasses.replace(
            task,
            name=f"{task.name} (validation)",
            test=[task.train[i] for i in keep],
            y_test=task.y_train[keep],
            info={**task.info, "design": f"{n} training posts as queries; test not read"},
        )
    if not task.val:
        raise ValueError(f"task {task.name}: no validation posts to design on")
    strata = [str(y.tolist()) for y in task.y_val]
    split_by = task.info.get("split_by", "post")
    if split_by.startswith("label:"):  # the label fixed val as a whole: halve it by post
        split_by = "post"
    early, _, scored, dropped = split_indices(task.val, strata, split_by, 0.0, 0.5, seed)
    return dataclasses.replace(
        task,
        name=f"{task.name} (validation)",
        val=[task.val[i] for i in early],
        y_val=task.y_val[early],
        test=[task.val[i] for i in scored],
        y_test=task.y_val[scored],
        info={
            **task.info,
            "design": "validation split halved by "
            f"{split_by}: {len(early)} early-stop, {len(scored)} scored; test not read",
            "design_posts_dropped": dropped,
        },
    )
