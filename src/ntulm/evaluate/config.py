"""The evaluation stage config (paper §4.3): the downstream MLP's hyperparameters, the same for
every model compared, and the tasks to build.

``ntulm evaluate`` (the lead's pipeline) builds :class:`EvalConfig` from ``--config`` plus
``key=value`` overrides (``mlp.lr=3e-4``) and saves the resolved config beside the report.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_serializer, model_validator

from ntulm.config import StageConfig


class MLPConfig(StageConfig):
    """The paper's 2-layer MLP on frozen post embeddings: Linear(d, h) -> tanh -> Linear(h, C)."""

    hidden: int = Field(0, ge=0, description="hidden width (0: the input width, as in the paper)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after tanh")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0.0, description="Adam L2 weight decay")
    batch_size: int = Field(128, ge=1, description="posts per mini-batch")
    max_epochs: int = Field(100, ge=1, description="maximum training epochs")
    patience: int = Field(5, ge=1, description="early stopping: epochs without validation gain")
    early_stopping: Literal["metric", "loss"] = Field(
        "metric",
        description="monitor the task's first metric on validation (ties: lower loss) or the "
        "validation loss alone",
    )
    standardize: bool = Field(
        True, description="z-score inputs with train-split mean/std (same for every model)"
    )
    num_threads: int = Field(0, ge=0, description="torch CPU threads (0: torch default)")


# The options each task type honours (besides ``type`` and ``name``); any other key is an error.
TASK_OPTIONS: dict[str, tuple[str, ...]] = {
    "classification": (
        "label", "split_by", "val_frac", "test_frac", "min_class_posts", "min_class_count",
        "min_class_authors", "max_per_class", "classes",
    ),
    "retrieval": (
        "label", "split_by", "test_frac", "min_class_posts", "min_class_count",
        "min_class_authors", "max_per_class", "classes", "max_test",
    ),
    "hashtag": ("top_k", "per_class", "min_classes", "val_frac", "test_frac", "exclusion"),
    "tweeteval": ("root", "names", "max_per_class", "classes"),
}  # fmt: skip


def _unknown_option(key: str, kind: str) -> str:
    valid = ("type", "name", *TASK_OPTIONS[kind])
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    others = [t for t, keys in TASK_OPTIONS.items() if key in keys]
    msg = f"{key!r} is not an option of a {kind} task"
    if others:
        msg += f" (it is one of {', '.join(others)})"
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return msg + f" Valid: {', '.join(valid)}"


class TaskSpec(StageConfig):
    """One task (or, for ``tweeteval``, a family of tasks) to build from data. Each type accepts
    only the options it honours (:data:`TASK_OPTIONS`)."""

    type: Literal["classification", "hashtag", "retrieval", "tweeteval"] = Field(
        ..., description="task builder"
    )
    name: str | None = Field(None, description="task name (default: derived from label/type)")
    label: str | None = Field(None, description="post label column (classification, retrieval)")
    split_by: str = Field(
        "post",
        description="split unit: 'post', 'author' (for author-level labels), or 'label:<column>' "
        "(train/validation/test membership from that label: train, val or validation, test; "
        "posts without it are left out)",
    )
    val_frac: float = Field(0.1, ge=0.0, lt=1.0, description="validation share")
    test_frac: float = Field(0.2, gt=0.0, lt=1.0, description="test share")
    min_class_posts: int = Field(
        10,
        ge=1,
        validation_alias=AliasChoices("min_class_posts", "min_class_count"),
        description="drop classes with fewer posts (alias: min_class_count)",
    )
    min_class_authors: int = Field(
        1, ge=1, description="drop classes held by fewer distinct authors"
    )
    classes: list[str] = Field(
        default_factory=list,
        description="keep only these classes (others dropped and counted); each one must "
        "survive the min_class_* filters",
    )
    max_per_class: int = Field(
        0,
        ge=0,
        description="cap posts per class, sampled (tweeteval: per class and split; 0: no cap)",
    )
    top_k: int = Field(1000, ge=2, description="hashtag task: number of hashtag classes")
    per_class: int = Field(100, ge=3, description="hashtag task: posts per hashtag class")
    min_classes: int | None = Field(
        None,
        ge=2,
        description="hashtag task: refuse when fewer hashtags than this keep per_class usable "
        "posts (default: half of top_k, at least 2)",
    )
    max_test: int = Field(5000, ge=2, description="retrieval: cap on test posts (queries)")
    exclusion: Literal["posts", "strict"] = Field(
        "posts",
        description="hashtag task, what leaves the graph: 'posts' = the validation and test "
        "posts' engagements; 'strict' also every (author, removed hashtag) edge of a test post's "
        "author, from any post",
    )
    root: str | None = Field(None, description="tweeteval: folder holding the task folders")
    names: list[str] = Field(
        default_factory=list, description="tweeteval: tasks, e.g. irony, stance, stance_abortion"
    )

    @model_validator(mode="before")
    @classmethod
    def _options_of_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") in TASK_OPTIONS:
            kind = data["type"]
            bad = [k for k in data if k not in ("type", "name", *TASK_OPTIONS[kind])]
            if bad:
                raise ValueError("; ".join(_unknown_option(k, kind) for k in bad))
            if "min_class_posts" in data and "min_class_count" in data:
                raise ValueError("give min_class_posts or its alias min_class_count, not both")
        return data

    @model_serializer(mode="wrap")
    def _dump(self, handler):  # noqa: ANN001, ANN202 (pydantic's serializer protocol)
        # only the options this type honours, so a saved config validates again
        keep = {"type", "name", *TASK_OPTIONS[self.type]} - {"min_class_count"}
        return {k: v for k, v in handler(self).items() if k in keep}

    @field_validator("split_by")
    @classmethod
    def _split_by(cls, v: str) -> str:
        if v in ("post", "author") or (v.startswith("label:") and v[len("label:") :].strip()):
            return v
        raise ValueError(f"split_by: {v!r} is not 'post', 'author' or 'label:<column>'")

    @property
    def min_class_count(self) -> int:
        """The old name of :attr:`min_class_posts`."""
        return self.min_class_posts

    @model_validator(mode="after")
    def _needs(self) -> TaskSpec:
        if self.type in ("classification", "retrieval") and not self.label:
            raise ValueError(f"label: required for a {self.type} task")
        if self.type == "tweeteval" and (not self.root or not self.names):
            raise ValueError("root and names: required for tweeteval tasks")
        if self.val_frac + self.test_frac >= 1.0:
            raise ValueError("val_frac + test_frac must leave posts for training")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes: duplicates in {self.classes}")
        if self.classes and len(self.classes) < 2:
            raise ValueError("classes: keep at least 2")
        if (
            self.type == "hashtag"
            and self.min_classes is not None
            and self.min_classes > self.top_k
        ):
            raise ValueError(f"min_classes ({self.min_classes}) > top_k ({self.top_k})")
        return self


class EvalConfig(StageConfig):
    """Downstream evaluation: MLP hyperparameters, seed and task list."""

    mlp: MLPConfig = Field(default_factory=MLPConfig, description="downstream MLP")
    seed: int = Field(13, description="seed of the splits and of the MLP")
    tasks: list[TaskSpec] = Field(default_factory=list, description="tasks to evaluate")
    embed_batch_size: int = Field(128, ge=1, description="posts per encoder batch")
    design: bool = Field(
        False,
        description="a design run: every task is scored on half of its validation split and "
        "early-stopped on the other half (evaluate/protocol.validation_task); test posts are "
        "never read. For choosing designs and hyperparameters; the graph, NTU embeddings and "
        "fine-tuning sample are those of the full run (same caches)",
    )
    bootstrap: int = Field(
        1000,
        ge=100,
        description="paired bootstrap replicates of each interval against the baseline",
    )
    bootstrap_seed: int = Field(0, description="seed of the paired bootstrap")
    level: float = Field(0.95, gt=0.5, lt=1.0, description="confidence level of the intervals")
    embed_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where post embeddings are computed: auto is the first CUDA GPU where torch "
        "sees one, else the CPU; a GPU's embeddings are not bit-identical to the CPU's, so a "
        "resolved cuda keys the embedding cache (cpu keys it as before) and is recorded in "
        "results.json",
    )
    embed_dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32",
        description="encoder precision for post embeddings; bfloat16 autocast is about 3x faster "
        "on CPUs with native bf16 (cosine to float32 above 0.9999) and many times slower where "
        "bf16 is emulated; auto: bfloat16 where native, else float32 (the resolved dtype keys "
        "the embedding cache and is recorded in results.json)",
    )
