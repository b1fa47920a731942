"""Stage 4: the NTU-enriched language model (paper §3.2-3.3).

A BERT-style masked LM with one extra input position, the projected mean NTU embedding of the
post (:func:`~ntulm.lm.model.inject_ntu`); MLM fine-tuning (:func:`~ntulm.lm.train.finetune`),
its no-NTU "BERT" baseline (``use_ntu=False``) and post embeddings
(:func:`~ntulm.lm.encode.encode`, ``concat_ntu=True`` for BERT-post-concat).

Beyond the paper, all off by default: per-type NTU tokens, NTU dropout and a learned pooling gate
(``lm/fusion.py``), and the TwHIN-BERT social contrastive objective (``lm/social.py``).

The names below are imported on first use (PEP 562): ``ntulm.lm.config`` is read by the CLI to
build its help, and must not pull in torch and transformers (seconds of start-up) to do so.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "LMConfig": "ntulm.lm.config",
    "TextNormConfig": "ntulm.lm.config",
    "normalize_text": "ntulm.lm.text",
    "embed_to_parquet": "ntulm.lm.encode",
    "encode": "ntulm.lm.encode",
    "NTULM": "ntulm.lm.model",
    "inject_ntu": "ntulm.lm.model",
    "FinetuneResult": "ntulm.lm.train",
    "evaluate_bits": "ntulm.lm.train",
    "finetune": "ntulm.lm.train",
}

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

if TYPE_CHECKING:
    from ntulm.lm.config import LMConfig, TextNormConfig
    from ntulm.lm.encode import embed_to_parquet, encode
    from ntulm.lm.model import NTULM, inject_ntu
    from ntulm.lm.text import normalize_text
    from ntulm.lm.train import FinetuneResult, evaluate_bits, finetune


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ntulm.lm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


class _Package(types.ModuleType):
    """Importing a submodule binds its name on the package: ``import ntulm.lm.encode`` would
    make ``ntulm.lm.encode`` the module, hiding the function :func:`encode` of the same name
    (the eager imports this package had before rebound the function afterwards). Keep the
    public function in that case."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
