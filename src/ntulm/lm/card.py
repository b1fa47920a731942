"""Model cards: the ``README.md`` written into every saved model directory and every export, so
that whoever opens the directory (or loads ``model/`` with another library) learns what each file
is and what each loader gives. The honest point of the card: ``model/`` is a plain transformers
checkpoint of the *text path*; loading it elsewhere silently drops the NTU token.

No torch import here: the card is plain text built from the saved metadata.
"""

from __future__ import annotations

from typing import Any

from ntulm import __version__

CARD = "README.md"


def _ntu_line(meta: dict[str, Any]) -> str:
    if not meta.get("use_ntu"):
        return (
            'the no-NTU baseline ("BERT" in the paper\'s tables): the same MLM fine-tuning with no '
            "NTU token, so the text path below *is* the whole model"
        )
    types = "+".join(meta.get("ntu_types") or []) or "?"
    if meta.get("ntu_tokens") == "per_type":
        how = f"one NTU token per type ({types}), each with its own projection"
    else:
        how = f"one NTU token: the mean {types} vector, projected to the model width"
    return f"NTULM: the word pieces plus {how} (paper §3.2)"


def model_card(meta: dict[str, Any], cfg: dict[str, Any] | None, files: list[str]) -> str:
    """The card of a model directory written by :meth:`NTULM.save`: ``meta`` is ``lm.json``,
    ``cfg`` the resolved ``LMConfig`` dump, ``files`` the names present in the directory."""
    cfg = cfg or {}
    text_norm = cfg.get("text") or {}
    ntu = bool(meta.get("use_ntu"))
    rows = [
        (
            "`model/`",
            "the masked LM (`save_pretrained`, safetensors) and its tokenizer: the text "
            "path, a standard transformers checkpoint" + (" (it has no NTU token)" if ntu else ""),
        ),
        ("`ntu_projection.safetensors`", "`W`, `b` of the NTU projection `s_ntu = W e_ntu + b`"),
        (
            "`ntu_fusion.safetensors`",
            "per-type NTU tokens and/or the pooling gate (beyond the paper)",
        ),
        (
            "`ntu/`",
            "the NTU embeddings (user and hashtag vectors from `ntulm train-kge`) in which "
            "a post's author, hashtags, ... are looked up",
        ),
        ("`lm.json`", "the NTU configuration: `use_ntu`, `ntu_dim`, `ntu_types`, ..."),
        ("`lm_config.json`", "the resolved `LMConfig`: backbone, text normalisation, `max_length`"),
        ("`train_result.json`", "held-out perplexity (bits) per epoch, steps, tokens/s"),
        ("`DONE.json`", "completion marker: the directory is finished"),
        ("`README.md`", "this card"),
    ]
    optional = {"ntu_projection.safetensors", "ntu_fusion.safetensors", "ntu"}
    table = "\n".join(
        f"| {name} | {what} |"
        for name, what in rows
        if name.strip("`/") not in optional or name.strip("`/") in files
    )
    if ntu:
        elsewhere = (
            "the text path only, **without the NTU token**: the post's author, hashtags and "
            "other NTUs are ignored, so its vectors are not the NTULM embeddings"
        )
    else:
        elsewhere = "the whole model (a no-NTU model has only the text path)"
    norm = ", ".join(
        part
        for part, on in (
            (f"mentions become `{text_norm.get('mentions')}`", text_norm.get("mentions")),
            (f"links become `{text_norm.get('urls')}`", text_norm.get("urls")),
            ("HTML entities are unescaped", text_norm.get("unescape_html")),
            ("whitespace is collapsed", text_norm.get("collapse_whitespace")),
        )
        if on
    )
    norm_note = (
        f"ntulm normalises each text first ({norm}; `ntulm.lm.normalize_text`) and truncates to "
        f"{cfg.get('max_length', '?')} word pieces; other libraries do neither unless you do it."
        if norm
        else f"ntulm truncates each text to {cfg.get('max_length', '?')} word pieces."
    )
    return f"""# NTULM model

{_ntu_line(meta)}. Saved by ntulm {__version__} (`ntulm finetune`: masked language modelling)
from the backbone `{cfg.get("backbone", "?")}`, hidden size {meta.get("hidden_size", "?")}.

## Files

| file | what it is |
|---|---|
{table}

## What each loader gives

| loader | what you get |
|---|---|
| `NTULM.load("DIR")`, then `model.encode(posts)` (`from ntulm.lm import NTULM`) | the whole model{" with the NTU token" if ntu else ""}: the mean of the final hidden states{" over the word pieces and the NTU token, by default with the post author's raw NTU vector appended (the recommended embedding; `concat_ntu=True` appends e_ntu instead, `concat_ntu=False` gives the paper's)" if ntu else ", by default with the post author's raw NTU vector appended where the directory carries NTU embeddings (`ntu/`: BERT + the author's vector, the recommended embedding; `concat_ntu=False` gives the text embedding alone)"} |
| `transformers.AutoModel.from_pretrained("DIR/model")` (or `AutoModelForMaskedLM`) | {elsewhere} |
| `SentenceTransformer("DIR/model")` | {elsewhere}; sentence-transformers adds a default mean pooling and warns |
| `ntulm export --model DIR --out ST_DIR --format sentence-transformers`, then `SentenceTransformer("ST_DIR")` | the text path as a proper sentence-transformers model (mean pooling over the word pieces, ntulm's `max_length`): the vectors of `model.encode(texts, text_only=True)` |

{norm_note}
"""


def export_card(meta: dict[str, Any], cfg: dict[str, Any] | None, source: str) -> str:
    """The card of a sentence-transformers export of the text path of ``source``."""
    cfg = cfg or {}
    ntu = bool(meta.get("use_ntu"))
    lost = (
        "It is the **text path only**: the NTU token (the post's author, hashtags, ... from the "
        "NTU embeddings) is not part of it, so its vectors are not the NTULM embeddings of "
        "`NTULM.load(...).encode(posts)`; they are those of `encode(texts, text_only=True)`."
        if ntu
        else "The source is a no-NTU model, so this is the whole model: its vectors are those of "
        "`NTULM.load(...).encode(texts, concat_ntu=False)`."
    )
    text_cfg = repr(cfg.get("text") or {})
    return f"""---
library_name: sentence-transformers
tags:
- sentence-transformers
- feature-extraction
---

# NTULM text path (sentence-transformers export)

Exported by `ntulm export --format sentence-transformers` (ntulm {__version__}) from the model
directory `{source}` (backbone `{cfg.get("backbone", "?")}`). Modules: the fine-tuned
encoder (transformers `AutoModel`, max sequence length {cfg.get("max_length", "?")}) and a
mean pooling over the word pieces, including `[CLS]` and `[SEP]` (`1_Pooling/`).

{lost}

```python
from sentence_transformers import SentenceTransformer
from ntulm.lm import TextNormConfig, normalize_text

model = SentenceTransformer("THIS_DIR")
norm = TextNormConfig(**{text_cfg})  # the source's text normalisation (ntulm_export.json)
emb = model.encode([normalize_text(t, norm) for t in texts])  # (N, {meta.get("hidden_size", "H")}) float32
```

ntulm normalises texts before tokenising (mentions to `@user`, links to `http`);
sentence-transformers does not. Normalise the texts first, as above, to get ntulm's vectors
exactly. `ntulm_export.json` records the source's `lm.json`, `lm_config.json` and the pooling.
"""
