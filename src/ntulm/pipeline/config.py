"""Configuration of ``ntulm run``: every stage's config plus the models to compare and the tasks.

A YAML file holds one section per stage (``graph``, ``kge``, ``lm``, ``eval``) with the same keys
as the stage commands, plus ``posts`` (the corpus), ``variants`` (the models compared) and
``seeds``. ``key=value`` overrides reach any of them (``lm.max_steps=100``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_serializer, model_validator

from ntulm.config import StageConfig
from ntulm.errors import ConfigError
from ntulm.evaluate.config import EvalConfig
from ntulm.graph.config import GraphConfig
from ntulm.kge.config import KGEConfig
from ntulm.lm.config import LMConfig
from ntulm.lm.data import block_weights, check_concat_scale
from ntulm.posts.config import ReaderConfig, lift_read_keys
from ntulm.posts.ntus import check_ntu_types


class VariantSpec(StageConfig):
    """One model compared in the report."""

    name: str = Field(..., description="name in tables and figures, e.g. 'NTULM author+hashtag'")
    use_ntu: bool = Field(True, description="inject the NTU token (false: the 'BERT' baseline)")
    ntu_types: list[str] = Field(
        ["author", "hashtag"],
        description="NTU types averaged into e_ntu (some of author, mention, hashtag)",
    )
    post_concat_of: str | None = Field(
        None,
        description="post-concat: no model of its own; the named model variant's embedding "
        "(with this variant's pooling) concatenated with e_ntu of ntu_types after the encoder. "
        "Of a no-NTU model it is the paper's BERT-post-concat; of an NTU model the NTULM "
        "embedding keeps the raw NTU vector beside it",
    )
    concat: Literal["mean", "per_type"] = Field(
        "mean",
        description="how a post_concat_of variant appends the NTUs of ntu_types: their 'mean' "
        "(one e_ntu, the paper's BERT-post-concat) or 'per_type', one e_ntu per type in "
        "ntu_types order, each as the paper computes it for that type alone (an unknown or "
        "absent type: the table mean), len(ntu_types) x D wide: the author's and the hashtags' "
        "vectors side by side instead of averaged into one point",
    )
    concat_scale: dict[str, float] = Field(
        default_factory=dict,
        description="a post_concat_of variant's weight of each appended NTU type's block, e.g. "
        "{hashtag: 0.25} (unnamed types: 1): each block is multiplied by its weight. The "
        "downstream MLP z-scores its inputs, so a weight changes only what compares raw "
        "embeddings (the retrieval task's cosine ranking): how much a block counts there against "
        "the text's. Per type, so it needs concat: per_type unless ntu_types holds one type",
    )
    model_of: str | None = Field(
        None,
        description="no model of its own: embed with the named model variant's fine-tuned model "
        "(to compare poolings); its use_ntu and ntu_types are taken from that variant",
    )
    pooling: Literal["mean", "mean+ntu", "gate"] = Field(
        "mean",
        description="post embedding: 'mean' of word pieces and NTU token (the paper), "
        "'mean+ntu' = [word-piece mean ; NTU token state] (NTU models only), or 'gate' = the "
        "learned gate of the two (models fine-tuned with lm.pooling_gate=true)",
    )
    lm: dict[str, Any] = Field(
        default_factory=dict,
        description="this variant's own LMConfig fields over the shared lm section, e.g. "
        "{ntu_tokens: per_type, ntu_dropout: 0.1, social_weight: 0.5} (not use_ntu, ntu_types "
        "or seed: those are the variant's and the run's)",
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler):  # noqa: ANN001, ANN202 (pydantic's serializer protocol)
        data = handler(self)
        if not self.lm:  # as before the field existed: same fingerprints, same caches
            data.pop("lm", None)
        if not self.unknown_ntu_train:  # likewise for the downstream NTU dropout
            data.pop("unknown_ntu_train", None)
        if self.unknown_ntu_types is None:
            data.pop("unknown_ntu_types", None)
        if self.concat == "mean":
            data.pop("concat", None)
        if not self.concat_scale:
            data.pop("concat_scale", None)
        return data

    @field_validator("ntu_types")
    @classmethod
    def _known_types(cls, v: list[str]) -> list[str]:
        return check_ntu_types(v, allow_empty=True)  # the registry, posts/ntus.py

    @model_validator(mode="after")
    def _types_if_used(self) -> VariantSpec:
        if (self.use_ntu or self.post_concat_of) and not self.ntu_types:
            raise ValueError("ntu_types: at least one NTU type for a variant that uses NTUs")
        if self.concat != "mean" and self.post_concat_of is None:
            raise ValueError(f"concat: {self.concat!r} is for a post_concat_of variant")
        if self.concat_scale:
            if self.post_concat_of is None:
                raise ValueError("concat_scale: is for a post_concat_of variant")
            check_concat_scale(
                self.concat_scale,
                self.ntu_types,
                self.concat == "per_type",
                types_are="in ntu_types",
                per_type_is="concat: per_type",
            )
        return self

    def block_scale(self, dim: int) -> np.ndarray | None:
        """The factor of each appended column, (len(groups) * dim,) float32, in the order the
        blocks are appended; None where every weight is 1."""
        return block_weights(self.ntu_types, self.concat == "per_type", self.concat_scale, dim)

    control: Literal["shuffled", "mean"] | None = Field(
        None,
        description="negative control of the model_of NTU model (or of a post_concat_of "
        "variant: then the concatenated e_ntu is substituted too): 'shuffled' feeds each post "
        "another post's e_ntu (seeded permutation within the split), 'mean' the NTU table mean "
        "(evaluate/controls.py); a gain counts only where it clears its controls",
    )
    unknown_ntu_train: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="NTU dropout of the downstream classifier: this fraction of each task's "
        "training posts (seeded) is embedded as if its NTUs of unknown_ntu_types were unknown "
        "(the table mean in the model's NTU input and in an appended e_ntu), so that the MLP "
        "also learns from the text what to do for posts whose authors the graph never saw. "
        "Validation and test posts are embedded as they are",
    )
    unknown_ntu_types: list[str] | None = Field(
        None,
        description="the NTU types unknown_ntu_train treats as unknown (default: ntu_types), "
        "e.g. [author] for what a post by a new author looks like",
    )

    @field_validator("unknown_ntu_types")
    @classmethod
    def _known_unknown_types(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else check_ntu_types(v)

    @model_validator(mode="after")
    def _unknown_needs_ntus(self) -> VariantSpec:
        if self.unknown_ntu_train > 0 and not (self.use_ntu or self.post_concat_of):
            raise ValueError(
                "unknown_ntu_train: the variant uses no NTUs (use_ntu false and no post_concat_of)"
            )
        return self

    def unknown_types(self) -> list[str]:
        """The NTU types that :attr:`unknown_ntu_train` makes unknown."""
        return self.unknown_ntu_types if self.unknown_ntu_types is not None else self.ntu_types


def controls_of(variants: list[VariantSpec]) -> dict[str, list[str]]:
    """Variant name -> its negative controls: the ``control`` variants over its model with its
    pooling (the model's own variant first, else a ``model_of`` one with that pooling)."""
    out: dict[str, list[str]] = {}
    for c in variants:
        if c.control is None:
            continue
        if c.post_concat_of is not None:  # a control of a post-concat variant of the same model
            refs = [
                v.name
                for v in variants
                if v.control is None
                and v.pooling == c.pooling
                and v.post_concat_of == c.post_concat_of
                and v.ntu_types == c.ntu_types
                and v.concat == c.concat
                and v.concat_scale == c.concat_scale
                and v.unknown_ntu_train == c.unknown_ntu_train
                and v.unknown_types() == c.unknown_types()
            ]
        else:
            refs = [
                v.name
                for v in variants
                if v.control is None
                and v.post_concat_of is None
                and v.pooling == c.pooling
                and c.model_of in (v.name, v.model_of)
                and v.unknown_ntu_train == c.unknown_ntu_train
                and v.unknown_types() == c.unknown_types()
            ]
        if refs:
            out.setdefault(refs[0], []).append(c.name)
    return out


def paper_variants() -> list[VariantSpec]:
    """The paper's Table 2/3 columns."""
    return [
        VariantSpec(name="BERT", use_ntu=False),
        VariantSpec(name="NTULM author", ntu_types=["author"]),
        VariantSpec(name="NTULM hashtag", ntu_types=["hashtag"]),
        VariantSpec(name="NTULM author+hashtag", ntu_types=["author", "hashtag"]),
        VariantSpec(
            name="BERT-post-concat", post_concat_of="BERT", ntu_types=["author", "hashtag"]
        ),
    ]


RECOMMENDED_MODEL = "NTULM a+h per-type + NTU warm-up"
RECOMMENDED = "NTULM a+h per-type + NTU warm-up + e_author"
RECOMMENDED_LM = {"ntu_tokens": "per_type", "ntu_warmup": True, "ntu_lr": 5.0e-4}


def default_variants() -> list[VariantSpec]:
    """The paper's columns, the recommended embedding and the text-only model with the same
    appended vector.

    The recommended embedding is an NTULM author+hashtag model fine-tuned with one NTU token per
    type, the NTU warm-up and a 10x NTU learning rate (``lm: RECOMMENDED_LM``), mean pooling, and
    the post author's NTU vector appended (what :func:`ntulm.lm.encode.encode` gives such a
    model by default). Per-type tokens + e_author were chosen first (design rounds 6 and 7, both
    protocols' validation halves; 3-seed tests ``benchmarks/results/fusion/final_pertype``,
    ``final_temporal``). The NTU warm-up + NTU lr was chosen for perplexity on the longer
    fine-tune's design seed, and on the validation halves of both protocols (design rounds 9 and
    10) it is at least as good as per-type + e_author on every task and wins account-type MAP; on
    the paper protocol's 3-seed test set (``final_warmup``) it wins MAP against per-type +
    e_author (+0.012) and against BERT + the author's vector (+0.020), no task a loss, with 0.87%
    fewer held-out bits than BERT. On the temporal protocol's (``final_warmup_temporal``) it wins
    MAP against BERT + the author's vector, ties the rest and has 0.99% fewer bits, but loses
    TweetEval against per-type + e_author (-0.016): there ``lm: {ntu_tokens: per_type}`` alone is
    the better pick for posts without NTUs."""
    return [
        *paper_variants(),
        VariantSpec(name="BERT-post-concat (author)", post_concat_of="BERT", ntu_types=["author"]),
        VariantSpec(
            name=RECOMMENDED_MODEL, ntu_types=["author", "hashtag"], lm=dict(RECOMMENDED_LM)
        ),
        VariantSpec(name=RECOMMENDED, post_concat_of=RECOMMENDED_MODEL, ntu_types=["author"]),
    ]


class PipelineConfig(StageConfig):
    """graph -> NTU embeddings -> fine-tuning (variants) -> post embeddings -> evaluation."""

    name: str = Field("ntulm", description="run name, shown in the report")
    posts: list[str] = Field(
        ..., description="corpus files/directories: the graph, fine-tuning and corpus tasks"
    )
    read: ReaderConfig = Field(
        default_factory=ReaderConfig,
        description="how the corpus is read, once, for the graph, the tasks and the fine-tuning "
        "sample (graph.read and graph's old reader keys, e.g. graph.format, mean the same)",
    )
    lm_posts: int = Field(
        20_000, ge=10, description="posts sampled (seeded) from the corpus for MLM fine-tuning"
    )
    graph: GraphConfig = Field(default_factory=GraphConfig, description="graph stage")
    kge: KGEConfig = Field(default_factory=KGEConfig, description="NTU embedding stage")
    lm: LMConfig = Field(
        default_factory=LMConfig, description="fine-tuning, shared by all variants"
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="downstream MLP and tasks")
    variants: list[VariantSpec] = Field(
        default_factory=default_variants,
        description="models compared (default: the paper's five columns, "
        f"'BERT-post-concat (author)', '{RECOMMENDED_MODEL}' and the recommended '{RECOMMENDED}')",
    )
    baseline: str = Field("BERT", description="variant the % changes are measured against")
    seeds: list[int] = Field(
        [13], description="seeds of the downstream MLP; with finetune_per_seed also of fine-tuning"
    )
    finetune_per_seed: bool = Field(
        False, description="fine-tune every variant once per seed (costly) instead of once"
    )
    isolate_stages: bool = Field(
        True,
        description="train the NTU embeddings, each fine-tune and each model's encoding in a "
        "worker process of its own, whose memory goes back to the OS when it ends (same "
        "results; false: all in this process, whose resident memory then grows stage by stage)",
    )
    lean_finetune: bool = Field(
        True,
        description="with isolate_stages: the fine-tune workers map large buffers and cap "
        "oneDNN's kernel cache (ntulm.memory.tune_allocator): about 0.9 GB less resident memory "
        "per fine-tune and the same weights, about 1.2x the fine-tuning time (false: faster, "
        "more memory)",
    )
    protocol: Literal["paper", "temporal"] = Field(
        "paper",
        description="evaluation protocol: 'paper' = the paper's random splits (by post or author) "
        "with task test and validation posts kept out of fine-tuning and, for the hashtag task, "
        "of the graph; 'temporal' = the graph, NTU embeddings and fine-tuning sample see only "
        "posts strictly before the cutoff, every corpus task validates and tests on posts at or "
        "after it (evaluate/temporal.py); TweetEval keeps its own splits",
    )
    cutoff: datetime | date | None = Field(
        None,
        description="temporal protocol: the cutoff time (a date is its midnight; UTC unless an "
        "offset is given), e.g. 2017-01-01; or give cutoff_quantile",
    )
    cutoff_quantile: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="temporal protocol: the cutoff as this quantile of the post times "
        "(quantile_disc over the corpus, resolved once and recorded), e.g. 0.8",
    )
    train_from: Literal["before", "any"] = Field(
        "before",
        description="temporal protocol: a corpus task's training posts are from 'before' the "
        "cutoff only (nothing after it is trained on), or from 'any' time (post-cutoff posts of "
        "the training split too)",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_reader(cls, data: Any) -> Any:
        """One reader config: ``graph.read`` (or graph's old flat keys) is ``read``; the graph
        section keeps a copy, so the config saved beside the graph says how its posts were read."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        graph = data.get("graph")
        if isinstance(graph, GraphConfig):
            graph = graph.model_dump(mode="json", exclude_unset=True)
        graph = lift_read_keys(dict(graph or {}), "graph.")
        if "read" in graph:
            given = graph.pop("read")
            if "read" in data and _as_reader(data["read"]) != _as_reader(given):
                raise ValueError(
                    "read and graph.read (or graph's reader keys: format, strict, ...) both "
                    "given: give the reader settings once, under read"
                )
            data["read"] = given
        if "read" in data:
            read = data["read"]
            graph["read"] = read.model_dump(mode="json") if isinstance(read, ReaderConfig) else read
        data["graph"] = graph
        return data

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one seed")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _variants(self) -> PipelineConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants: duplicate names in {names}")
        if self.baseline not in names:
            raise ValueError(f"baseline: {self.baseline!r} is not a variant ({', '.join(names)})")
        own = {v.name: v for v in self.model_variants()}
        for v in self.variants:
            fixed = sorted({"use_ntu", "ntu_types", "seed"} & set(v.lm))
            if fixed:
                raise ValueError(f"variants: {v.name!r} lm: set {fixed} on the variant, not in lm")
            if v.lm and v.name not in own:
                raise ValueError(f"variants: {v.name!r} lm: only a variant with its own model")
            if v.name in own:
                try:
                    self.lm_config(v, self.seeds[0])
                except ConfigError as exc:
                    raise ValueError(f"variants: {v.name!r}: {exc}") from None
        for i, v in enumerate(self.variants):
            if v.post_concat_of is not None and v.model_of is not None:
                raise ValueError(f"variants: {v.name!r} has both post_concat_of and model_of")
            if v.post_concat_of is not None:
                base = own.get(v.post_concat_of)
                if base is None:
                    raise ValueError(
                        f"variants: {v.name!r} post_concat_of must name a variant with its own "
                        "model"
                    )
                if v.pooling != "mean" and not base.use_ntu:
                    raise ValueError(
                        f"variants: {v.name!r} post-concat of a no-NTU model pools with 'mean'"
                    )
                if v.pooling == "mean+ntu" and not base.use_ntu:
                    raise ValueError(f"variants: {v.name!r} pooling 'mean+ntu' needs an NTU model")
            if v.model_of is not None:
                base = own.get(v.model_of)
                if base is None:
                    raise ValueError(
                        f"variants: {v.name!r} model_of must name a variant with its own model"
                    )
                given = {
                    k: getattr(v, k) for k in ("use_ntu", "ntu_types") if k in v.model_fields_set
                }
                taken = {"use_ntu": base.use_ntu, "ntu_types": base.ntu_types}
                if any(given[k] != taken[k] for k in given):
                    raise ValueError(
                        f"variants: {v.name!r} takes use_ntu and ntu_types from its model_of "
                        f"{base.name!r} ({taken}); do not set others"
                    )
                # validated like any variant (model_copy would skip the validators)
                v = VariantSpec.model_validate({**v.model_dump(mode="json"), **taken})
                self.variants[i] = v
            if v.pooling == "mean+ntu" and not v.use_ntu:
                raise ValueError(f"variants: {v.name!r} pooling 'mean+ntu' needs an NTU model")
            if v.pooling == "gate":
                base = own.get(v.model_of or v.post_concat_of or v.name)
                if base is None or not self.lm_config(base, self.seeds[0]).pooling_gate:
                    raise ValueError(
                        f"variants: {v.name!r} pooling 'gate' needs a model variant with "
                        "lm: {pooling_gate: true}"
                    )
            if v.control is not None:
                ref_v = own.get(v.model_of or v.post_concat_of or "")
                if ref_v is None or not ref_v.use_ntu:
                    raise ValueError(
                        f"variants: {v.name!r} control needs model_of (or post_concat_of) "
                        "naming an NTU model variant"
                    )
        if not self.eval.tasks:
            raise ValueError("eval.tasks: at least one task")
        if self.protocol == "temporal":
            if (self.cutoff is None) == (self.cutoff_quantile is None):
                raise ValueError(
                    "protocol temporal: give exactly one of cutoff (a date) and cutoff_quantile"
                )
        elif self.cutoff is not None or self.cutoff_quantile is not None:
            raise ValueError("cutoff / cutoff_quantile: only with protocol: temporal")
        elif self.train_from != "before":
            raise ValueError("train_from: only with protocol: temporal")
        return self

    def lm_config(self, v: VariantSpec, seed: int) -> LMConfig:
        """The fine-tuning config of model variant ``v``: the shared ``lm`` section, the variant's
        ``lm`` fields, its ``use_ntu`` and ``ntu_types``, and ``seed``."""
        data = {
            **self.lm.model_dump(mode="json"),
            **v.lm,
            "use_ntu": v.use_ntu,
            "ntu_types": v.ntu_types,
            "seed": seed,
        }
        return LMConfig.build(data, source=f"variants[{v.name}].lm")

    def overlap_types(self) -> list[str]:
        """NTU types behind the overlap flags (Table 4): those any variant injects or concatenates."""
        return sorted(
            {t for v in self.variants if v.use_ntu or v.post_concat_of for t in v.ntu_types}
        )

    def controls(self) -> dict[str, list[str]]:
        """Variant name -> the names of its negative controls (:func:`controls_of`)."""
        return controls_of(self.variants)

    def model_variants(self) -> list[VariantSpec]:
        """The variants that need a fine-tuned model of their own."""
        return [v for v in self.variants if v.post_concat_of is None and v.model_of is None]


def _as_reader(value: Any) -> Any:
    try:
        return ReaderConfig.model_validate(value).model_dump(mode="json")
    except ValueError:
        return value
