"""``ntulm export``: a saved model's text path as a sentence-transformers directory.

The NTU token needs the NTU embeddings and the projection, which no other library knows about;
what other libraries can load is the encoder run on the text alone. This module writes that as a
real sentence-transformers model (``modules.json``: the transformers encoder, then a mean
``Pooling`` over the word pieces), built and saved with sentence-transformers itself, so the
files are that library's own. Its vectors equal ``encode(texts, text_only=True)`` of the source
(on normalised texts; tested). The directory's ``README.md`` says what it is and what it lacks.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ntulm.artifacts import read_json, write_json, write_text
from ntulm.errors import ArtifactError, ConfigError
from ntulm.lm.card import CARD, export_card

log = logging.getLogger(__name__)

FORMATS = ("sentence-transformers",)
EXPORT_META = "ntulm_export.json"


def export_model(model_dir: str | Path, out_dir: str | Path, fmt: str = FORMATS[0]) -> Path:
    """Write the text path of the model in ``model_dir`` to ``out_dir`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: not one of {', '.join(FORMATS)}")
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        raise ConfigError(
            "export --format sentence-transformers needs the sentence-transformers package "
            "(pip install 'ntulm[export]')"
        ) from None
    from ntulm.lm.model import LM_CONFIG, LM_META, NTULM

    src, out = Path(model_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty directory")
    model = NTULM.load(src)  # refuses what is not a model directory
    assert model.cfg is not None
    kwargs = _model_kwargs(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # renamed to ``out`` when complete
    shutil.rmtree(stage, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(prefix="ntulm-export-") as tmp:
            # The encoder alone (e.g. BertModel, no MLM head), as AutoModel loads it.
            model.base.save_pretrained(tmp, safe_serialization=True)
            model.tokenizer.save_pretrained(tmp)
            encoder = Transformer(tmp, max_seq_length=model.cfg.max_length, model_kwargs=kwargs)
            pooling = Pooling(model.hidden_size, pooling_mode="mean")
            SentenceTransformer(modules=[encoder, pooling], device="cpu").save(str(stage))
        _keep_model_kwargs(stage, kwargs)
        meta, cfg = read_json(src / LM_META), read_json(src / LM_CONFIG)
        write_json(
            stage / EXPORT_META,
            {
                "source": str(src.resolve()),
                "format": fmt,
                "path": "text only (no NTU token)",
                "pooling": "mean over the word pieces incl. [CLS] and [SEP]",
                "lm": meta,
                "lm_config": cfg,
            },
        )
        # replaces the library's generic card: say what this is, and what it is not
        write_text(stage / CARD, export_card(meta, cfg, str(src)))
        if out.exists():
            out.rmdir()
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("sentence-transformers export of the text path of %s -> %s", src, out)
    return out


def _model_kwargs(model: Any) -> dict[str, Any]:
    # An MLM's encoder has no pooler; without this, AutoModel would add a random one (unused by
    # the mean pooling) and report it as newly initialised on every load.
    has_pooler = getattr(model.base, "pooler", None) is not None
    return {} if has_pooler else {"add_pooling_layer": False}


def _keep_model_kwargs(out: Path, kwargs: dict[str, Any]) -> None:
    """sentence-transformers does not save ``model_kwargs``; its loader reads them from
    ``sentence_bert_config.json`` (a documented key), so put them there."""
    if not kwargs:
        return
    path = out / "sentence_bert_config.json"
    if not path.exists():
        raise ArtifactError(f"{out}: sentence-transformers wrote no sentence_bert_config.json")
    config = read_json(path)
    config["model_kwargs"] = {**config.get("model_kwargs", {}), **kwargs}
    write_json(path, config)
