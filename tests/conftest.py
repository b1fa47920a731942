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
