"""The NTU-enriched masked language model (paper §3.2).

A BERT-style masked LM from transformers plus one linear *projection* of e_ntu (the mean NTU
embedding of a post) into the model width. :func:`inject_ntu` is the whole method: the word-piece
embeddings ``[s_0 .. s_n]`` (word + position + token type, as BERT computes them) get one more
position ``s_ntu = W e_ntu + b`` with no position and no token-type embedding, the attention mask
grows by one, and the encoder runs on ``[s_0 .. s_n, s_ntu]``.

The NTU vector sits at a fixed last slot ``T`` of the padded batch, after any padding. Since it has
no position embedding and self-attention is permutation-equivariant, that is exactly the same as
putting it right after each post's last real token; the mask makes padding invisible either way
(``tests/test_lm_model.py`` checks a padded post against the same post alone).

The projected vector goes through the embedding LayerNorm (``ntu_layernorm``, default on) so that
it enters the pretrained encoder on the same scale as the word pieces, whatever the scale of the
KGE vectors; the paper says only "no position or type embedding".

Beyond the paper (all off by default, ``lm/fusion.py``): ``ntu_tokens=per_type`` injects K NTU
tokens, one per type, at slots ``T .. T+K-1`` with their own attention mask (an absent type can be
masked out); ``pooling_gate`` adds a learned pooling; ``hidden_states(text_only=True)`` runs the
encoder without NTU tokens (the text view of the social objective, ``lm/social.py``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.utils import logging as hf_logging

from ntulm.artifacts import (
    DONE,
    atomic_path,
    mark_done,
    read_json,
    require_done,
    unmark,
    write_json,
    write_text,
)
from ntulm.errors import ArtifactError, ConfigError
from ntulm.lm.card import CARD, model_card
from ntulm.lm.config import STAGE, LMConfig, resolve_backbone
from ntulm.lm.fusion import GatePooling, TypedNTUTokens

if TYPE_CHECKING:
    import numpy as np

    from ntulm.kge import NTUEmbeddings

log = logging.getLogger(__name__)

MODEL_DIR = "model"  # save_pretrained of the masked LM and its tokenizer
PROJECTION = "ntu_projection.safetensors"
FUSION = "ntu_fusion.safetensors"  # per-type NTU tokens and/or the pooling gate, if any
LM_META = "lm.json"  # NTU configuration: use_ntu, ntu_dim, ntu_types, ntu_layernorm, fusion
LM_CONFIG = "lm_config.json"  # the resolved LMConfig
NTU_DIR = "ntu"  # a copy of the NTU embeddings, so the model directory is self-contained


def inject_ntu(
    embeddings: nn.Module,
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor,  # (B, T)
    s_ntu: torch.Tensor | None,  # (B, H) projected e_ntu, (B, K, H) per-type tokens, or None
    layernorm: bool = True,
    ntu_mask: torch.Tensor | None = None,  # (B, K): which NTU tokens are attended (default all)
) -> tuple[torch.Tensor, torch.Tensor]:
    """``S = [s_0 .. s_n, s_ntu]`` and its attention mask: (B, T+1, H), (B, T+1) (T+K for K
    per-type tokens)."""
    words = embeddings(input_ids=input_ids)  # (B, T, H): word + position + type, LayerNorm, dropout
    if s_ntu is None:
        return words, attention_mask
    if s_ntu.dim() == 2:
        s_ntu = s_ntu[:, None, :]  # (B, 1, H): the paper's one NTU token
    if layernorm:
        s_ntu = embeddings.LayerNorm(s_ntu)
    s_ntu = embeddings.dropout(s_ntu)  # no position embedding, no token-type embedding
    x = torch.cat([words, s_ntu], dim=1)  # (B, T+K, H)
    if ntu_mask is None:
        ntu_mask = attention_mask.new_ones(s_ntu.shape[:2])
    mask = torch.cat([attention_mask, ntu_mask.to(attention_mask.dtype)], dim=1)  # (B, T+K)
    return x, mask


@contextlib.contextmanager
def _quiet_transformers(progress: bool) -> Iterator[None]:
    """transformers' load report and (unless ``progress``) its progress bars, off for a while."""
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _mlm_head(mlm: PreTrainedModel) -> tuple[str, nn.Module]:
    for name in ("cls", "lm_head"):  # BERT / RoBERTa-style masked LMs
        if isinstance(getattr(mlm, name, None), nn.Module):
            return name, getattr(mlm, name)
    raise ConfigError(
        f"backbone {type(mlm).__name__}: no MLM head found (expected .cls or .lm_head)"
    )


# The config names under which transformers' encoders keep their hidden and attention dropout.
DROPOUT_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "attention_dropout",
)


def _dropout_overrides(path: str, cfg: LMConfig) -> dict[str, float]:
    """``cfg.backbone_dropout`` as config overrides for ``from_pretrained`` (empty: unchanged)."""
    if cfg.backbone_dropout is None:
        return {}
    conf = AutoConfig.from_pretrained(path)
    names = [n for n in DROPOUT_FIELDS if hasattr(conf, n)]
    if not names:
        raise ConfigError(
            f"backbone_dropout: {cfg.backbone} ({type(conf).__name__}) has none of the dropout "
            f"settings {', '.join(DROPOUT_FIELDS)}"
        )
    return dict.fromkeys(names, cfg.backbone_dropout)


class NTULM(nn.Module):
    """Masked LM + NTU projection. ``projection`` is None for the no-NTU ("BERT") baseline and for
    per-type tokens (``typed``, K types); ``gate`` is the optional learned pooling."""

    def __init__(
        self,
        mlm: PreTrainedModel,
        ntu_dim: int | None,
        ntu_layernorm: bool = True,
        n_types: int = 0,  # > 0: per-type NTU tokens instead of the one projection
        ntu_absent: str = "unknown",
        pooling_gate: bool = False,
    ):
        super().__init__()
        self.mlm = mlm
        if not hasattr(self.base, "embeddings") or not hasattr(self.base, "encoder"):
            raise ConfigError(
                f"backbone {type(mlm).__name__}: not BERT-style (needs .embeddings and .encoder)"
            )
        self.head_name, _ = _mlm_head(mlm)
        hidden = mlm.config.hidden_size
        typed = bool(ntu_dim and n_types)
        self.projection = nn.Linear(ntu_dim, hidden) if ntu_dim and not typed else None
        self.typed = TypedNTUTokens(n_types, ntu_dim, hidden, ntu_absent) if typed else None
        self.gate = GatePooling(hidden) if pooling_gate else None
        self.ntu_layernorm = ntu_layernorm
        self.tokenizer: Any = None  # set by from_backbone / load
        self.cfg: LMConfig | None = None
        self.ntu: NTUEmbeddings | None = None

    # Views into ``mlm`` (properties, so their weights are not registered twice).
    @property
    def base(self) -> nn.Module:
        return self.mlm.base_model

    @property
    def head(self) -> nn.Module:
        return getattr(self.mlm, self.head_name)

    @property
    def hidden_size(self) -> int:
        return int(self.mlm.config.hidden_size)

    @property
    def use_ntu(self) -> bool:
        return self.projection is not None or self.typed is not None

    def ntu_parameters(self) -> list[nn.Parameter]:
        """The NTU input path's own weights: the projection (per-type: the projections with their
        type and unknown vectors); not the gate, which pools, and not the shared LayerNorm."""
        return [p for m in (self.projection, self.typed) if m is not None for p in m.parameters()]

    @property
    def ntu_dim(self) -> int | None:
        for m in (self.projection, self.typed):
            if m is not None:
                return m.in_features
        return None

    # ------------------------------------------------------------------ forward
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        e_ntu: torch.Tensor | None,  # (B, D); per-type: (B, K, D), NaN rows for absent types
        text_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states and their mask: (B, T+1, H), (B, T+1) (T+K with K per-type tokens;
        T without NTU tokens: the no-NTU baseline, or ``text_only``)."""
        s_ntu, ntu_mask = None, None
        if self.use_ntu and not text_only:
            if e_ntu is None:
                raise ValueError("this model injects NTUs: pass e_ntu")
            if self.typed is not None:
                s_ntu, ntu_mask = self.typed(e_ntu)  # (B, K, H), (B, K)
            else:
                assert self.projection is not None
                s_ntu = self.projection(e_ntu.to(self.projection.weight.dtype))  # (B, H)
        x, mask = inject_ntu(
            self.base.embeddings, input_ids, attention_mask, s_ntu, self.ntu_layernorm, ntu_mask
        )
        mask4d = create_bidirectional_mask(
            config=self.base.config, inputs_embeds=x, attention_mask=mask
        )
        out = self.base.encoder(x, attention_mask=mask4d)
        return out.last_hidden_state, mask

    def mlm_loss(
        self,
        input_ids: torch.Tensor,  # (B, T) with masked positions replaced
        attention_mask: torch.Tensor,  # (B, T)
        labels: torch.Tensor,  # (B, T): original id at masked positions, -100 elsewhere
        e_ntu: torch.Tensor | None = None,  # (B, D)
        encoder_grad: bool = True,
    ) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy over masked positions, with the head applied only there."""
        with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
            hidden, _ = self.hidden_states(input_ids, attention_mask, e_ntu)
        # Labels cover the T text positions only: the NTU slot (index T) is never a target.
        sel = labels != -100  # (B, T)
        h = hidden[:, : labels.shape[1]][sel]  # (M, H)
        logits = self.head(h)  # (M, V): the vocabulary projection at M masked positions, not B*T
        loss = nn.functional.cross_entropy(logits.float(), labels[sel])
        return loss, int(sel.sum())

    # ------------------------------------------------------------------ build / save / load
    @classmethod
    def from_backbone(cls, cfg: LMConfig, ntu_dim: int | None) -> tuple[NTULM, bool]:
        """A fresh model from ``cfg.backbone``; also returns whether the MLM head is new."""
        path = resolve_backbone(cfg.backbone)
        try:
            with _quiet_transformers(cfg.progress):  # a missing head is reported by us
                tokenizer = AutoTokenizer.from_pretrained(path)
                mlm, info = AutoModelForMaskedLM.from_pretrained(
                    path, output_loading_info=True, **_dropout_overrides(path, cfg)
                )
        except OSError as exc:
            raise ConfigError(
                f"backbone: cannot load {cfg.backbone!r}: {str(exc).splitlines()[0]}"
            ) from None
        model = cls(
            mlm,
            ntu_dim if cfg.use_ntu else None,
            cfg.ntu_layernorm,
            n_types=len(cfg.ntu_types) if cfg.ntu_tokens == "per_type" else 0,
            ntu_absent=cfg.ntu_absent,
            pooling_gate=cfg.pooling_gate,
        )
        head_new = any(k.startswith(model.head_name + ".") for k in info.get("missing_keys", ()))
        if head_new:
            mlm.tie_weights()  # decoder = word embeddings
            log.info(
                "%s has no MLM head: a new one is added (decoder tied to the word embeddings)", path
            )
        model.tokenizer, model.cfg = tokenizer, cfg
        return model, head_new

    def save(self, out_dir: str | Path, *, done: bool = True) -> None:
        """Write the model directory; ``done``: also its completion marker (stage ``lm``), which
        :meth:`load` requires. Fine-tuning saves its best epoch with ``done=False`` and marks the
        directory when the run ends, so a run killed after an epoch leaves no model to trust."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        unmark(out)
        with _quiet_transformers(self.cfg.progress if self.cfg is not None else True):
            self.mlm.save_pretrained(out / MODEL_DIR, safe_serialization=True)  # its bar, too
            self.tokenizer.save_pretrained(out / MODEL_DIR)
        meta: dict[str, Any] = {
            "use_ntu": self.use_ntu,
            "ntu_dim": self.ntu_dim,
            "ntu_types": self.cfg.ntu_types if self.cfg else None,
            "ntu_layernorm": self.ntu_layernorm,
            "hidden_size": self.hidden_size,
            "ntu_tokens": "per_type" if self.typed is not None else "mean",
            "n_types": int(self.typed.weight.shape[0]) if self.typed is not None else 0,
            "ntu_absent": self.typed.absent if self.typed is not None else "unknown",
            "pooling_gate": self.gate is not None,
        }
        if self.projection is not None:
            with atomic_path(out / PROJECTION) as tmp:
                state = {
                    k: v.detach().contiguous().cpu()
                    for k, v in self.projection.state_dict().items()
                }
                save_file(state, str(tmp))
        fusion = {
            f"{name}.{k}": v.detach().contiguous().cpu()
            for name in ("typed", "gate")
            if getattr(self, name) is not None
            for k, v in getattr(self, name).state_dict().items()
        }
        if fusion:
            with atomic_path(out / FUSION) as tmp:
                save_file(fusion, str(tmp))
        if self.ntu is not None:
            self.ntu.save(out / NTU_DIR)
        cfg = self.cfg.model_dump(mode="json") if self.cfg is not None else None
        if cfg is not None:
            write_json(out / LM_CONFIG, cfg)
        write_json(out / LM_META, meta)
        # what each file is and what each loader gives (other libraries: no NTU token)
        write_text(out / CARD, model_card(meta, cfg, sorted(p.name for p in out.iterdir())))
        if done:
            mark_done(out, STAGE, self.cfg.model_dump(mode="json") if self.cfg else {})

    @classmethod
    def load(cls, out_dir: str | Path, ntu: NTUEmbeddings | None = None) -> NTULM:
        """Load a finished model directory (``ntulm finetune``, :meth:`save`); the NTU
        embeddings come from ``ntu`` or the saved copy. A directory without its ``DONE.json``
        (a fine-tuning run killed or still running) is refused with an :class:`ArtifactError`."""
        out = Path(out_dir)
        if not (out / LM_META).exists() and not (out / DONE).exists():
            raise ArtifactError(
                f"{out}: not an NTULM model directory (no {LM_META}; run `ntulm finetune`)"
            )
        require_done(out, STAGE, "model")
        meta = read_json(out / LM_META)
        cfg = LMConfig.build(read_json(out / LM_CONFIG), source=str(out / LM_CONFIG))
        with _quiet_transformers(cfg.progress):
            mlm = AutoModelForMaskedLM.from_pretrained(out / MODEL_DIR)
        model = cls(  # a model saved before the fusion options has none of their keys
            mlm,
            meta["ntu_dim"] if meta["use_ntu"] else None,
            meta["ntu_layernorm"],
            n_types=meta.get("n_types", 0),
            ntu_absent=meta.get("ntu_absent", "unknown"),
            pooling_gate=meta.get("pooling_gate", False),
        )
        if model.projection is not None:
            model.projection.load_state_dict(load_file(str(out / PROJECTION)))
        if model.typed is not None or model.gate is not None:
            state = load_file(str(out / FUSION))
            for name in ("typed", "gate"):
                module = getattr(model, name)
                if module is not None:
                    pre = name + "."
                    module.load_state_dict(
                        {k[len(pre) :]: v for k, v in state.items() if k.startswith(pre)}
                    )
        model.tokenizer = AutoTokenizer.from_pretrained(out / MODEL_DIR)
        model.cfg = cfg
        if ntu is None and (out / NTU_DIR).exists():
            from ntulm.kge import NTUEmbeddings

            ntu = NTUEmbeddings.load(out / NTU_DIR)
        model.ntu = ntu
        return model.eval()

    def encode(self, posts: Any, **kwargs: Any) -> np.ndarray:
        """Post embeddings; see :func:`ntulm.lm.encode.encode`."""
        from ntulm.lm.encode import encode

        return encode(self, posts, **kwargs)
