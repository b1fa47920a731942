"""Stage 6: downstream evaluation of post embeddings (paper §4-5).

Tasks built from labelled posts (:func:`classification_task`, :func:`hashtag_task`,
:func:`retrieval_task`) or TweetEval files (:func:`tweeteval_tasks`); :func:`evaluate_task` trains
the paper's 2-layer MLP on frozen embeddings and reports the task's metrics overall and on the
overlap / non-overlap subsets; :func:`percent_change` compares a model with a baseline.

The MLP (``train_mlp``, ``FittedMLP``) is imported at first use, so that importing this package
(the pipeline's own process does, long before it scores a task) does not load torch.
"""

from typing import TYPE_CHECKING, Any

from ntulm.evaluate.config import EvalConfig, MLPConfig, TaskSpec
from ntulm.evaluate.hashtag import hashtag_task, remove_hashtag
from ntulm.evaluate.metrics import (
    average_precision,
    compute_metrics,
    perplexity,
    perplexity_bits,
    recall_at_k,
    retrieval_map,
)
from ntulm.evaluate.overlap import percent_change
from ntulm.evaluate.runner import EmbedFn, evaluate_task
from ntulm.evaluate.splits import split_indices
from ntulm.evaluate.tasks import Task, build_tasks, classification_task, retrieval_task
from ntulm.evaluate.tweeteval import tweeteval_tasks

if TYPE_CHECKING:
    from ntulm.evaluate.mlp import FittedMLP, train_mlp


def __getattr__(name: str) -> Any:  # PEP 562: torch only when the MLP is asked for
    if name in ("FittedMLP", "train_mlp"):
        from ntulm.evaluate import mlp

        return getattr(mlp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EmbedFn",
    "EvalConfig",
    "FittedMLP",
    "MLPConfig",
    "Task",
    "TaskSpec",
    "average_precision",
    "build_tasks",
    "classification_task",
    "compute_metrics",
    "evaluate_task",
    "hashtag_task",
    "percent_change",
    "perplexity",
    "perplexity_bits",
    "recall_at_k",
    "remove_hashtag",
    "retrieval_map",
    "retrieval_task",
    "split_indices",
    "train_mlp",
    "tweeteval_tasks",
]
