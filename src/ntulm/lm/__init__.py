"""Stage 4: the NTU-enriched language model (paper §3.2-3.3).

A BERT-style masked LM with one extra input position, the projected mean NTU embedding of the
post (:func:`~ntulm.lm.model.inject_ntu`); MLM fine-tuning (:func:`~ntulm.lm.train.finetune`),
its no-NTU "BERT" baseline (``use_ntu=False``) and post embeddings
(:func:`~ntulm.lm.encode.encode`, ``concat_ntu=True`` for BERT-post-concat).

Beyond the paper, all off by default: per-type NTU tokens, NTU dropout and a learned pooling gate
(``lm/fusion.py``), and the TwHIN-BERT social contrastive objective (``lm/social.py``).
"""

from ntulm.lm.config import LMConfig, TextNormConfig
from ntulm.lm.encode import embed_to_parquet, encode
from ntulm.lm.model import NTULM, inject_ntu
from ntulm.lm.text import normalize_text
from ntulm.lm.train import FinetuneResult, evaluate_bits, finetune

__all__ = [
    "NTULM",
    "FinetuneResult",
    "LMConfig",
    "TextNormConfig",
    "embed_to_parquet",
    "encode",
    "evaluate_bits",
    "finetune",
    "inject_ntu",
    "normalize_text",
]
