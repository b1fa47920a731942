"""Nothing in the project unpickles: loading a file someone else wrote must never run code.

The source of ``src/`` and ``benchmarks/`` is parsed (not grepped, so comments and strings do not
count and import aliases do) and every call that can unpickle is refused: ``pickle``/``dill``/
``cloudpickle``/``joblib`` loads, ``pandas.read_pickle``, ``numpy.load(..., allow_pickle=True)``
and ``torch.load`` without ``weights_only=True``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "benchmarks")

# Fully qualified callables that unpickle whatever their arguments.
_ALWAYS = {
    f"{mod}.{fn}"
    for mod in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle")
    for fn in ("load", "loads", "Unpickler")
} | {"joblib.load", "pandas.read_pickle", "shelve.open", "torch.serialization.load"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> fully qualified name, from the module's imports."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = (
                    a.name if a.asname else a.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _kw_is_true(call: ast.Call, name: str) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def pickle_loads(source: str, filename: str = "<source>") -> list[str]:
    """``"file:line: call"`` for every call in ``source`` that may unpickle."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + (f".{rest}" if rest else "")
        bad = (
            full in _ALWAYS
            or (full == "torch.load" and not _kw_is_true(node, "weights_only"))
            or (
                full == "numpy.load"
                and any(k.arg == "allow_pickle" for k in node.keywords)
                and not any(
                    k.arg == "allow_pickle"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is False
                    for k in node.keywords
                )
            )
        )
        if bad:
            found.append(f"{filename}:{node.lineno}: {name}(...)")
    return found


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load('x')",
        "import torch\ntorch.load('x', weights_only=False)",
        "from torch import load\nload('x')",
        "import pickle\npickle.load(open('x', 'rb'))",
        "import pickle as pk\npk.loads(b'')",
        "from pickle import Unpickler\nUnpickler(f).load()",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import joblib\njoblib.load('x')",
        "import pandas as pd\npd.read_pickle('x')",
    ],
)
def test_scanner_finds_pickle_loads(source):
    assert pickle_loads(source), source


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load('x', weights_only=True)",
        "import numpy as np\nnp.load('x.npz')",
        "import numpy as np\nnp.load('x.npz', allow_pickle=False)",
        "from safetensors.torch import load_file\nload_file('x')",
        "import json\njson.load(open('x'))",
        "# torch.load('x') in a comment\nx = 'pickle.load'",
    ],
)
def test_scanner_accepts_safe_loads(source):
    assert pickle_loads(source) == []


def test_no_pickle_load_in_the_project():
    files = [f for d in SCANNED for f in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20  # the scan really sees the project
    found = [
        hit
        for f in files
        for hit in pickle_loads(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))
    ]
    assert found == [], (
        "calls that may unpickle (load safetensors/JSON, or weights_only=True):\n"
        + "\n".join(found)
    )
