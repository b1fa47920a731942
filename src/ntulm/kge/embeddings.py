"""The NTU embedding artifact: one table per node type, one translation vector per relation.

This is what later stages consume (the language model injects these vectors as NTU tokens). It is
a plain container of numpy arrays with lookups by graph key, user reference or hashtag, cosine
nearest neighbours, and an atomic ``save``/``load`` to an artifact directory:

- ``embeddings.safetensors``: one tensor per node type (``table.<type>``, (n, dim) float32) and
  one per relation (``relation.<name>``, (dim,) float32);
- ``nodes_<type>.parquet``: row order and keys (copies of the graph's node tables);
- ``embeddings.json``: dim, node types, relations and the resolved training config;
- ``DONE.json``: the completion marker (stage ``kge``, ``ntulm.artifacts``), written last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file, save_file

from ntulm.artifacts import atomic_path, mark_done, read_json, unmark, write_json
from ntulm.errors import ArtifactError

if TYPE_CHECKING:
    from ntulm.posts import UserRef

TENSORS = "embeddings.safetensors"
META = "embeddings.json"


@dataclass
class NTUEmbeddings:
    """Trained NTU vectors. Row ``i`` of ``tables[t]`` is the node with graph key ``keys[t][i]``."""

    tables: dict[str, np.ndarray]  # node type -> (n, dim) float32
    keys: dict[str, list[str]]  # node type -> graph vocab key of each row
    relations: dict[str, np.ndarray]  # relation name -> (dim,) float32
    user_handles: list[str | None]  # handle of each user row (None if unknown)
    config: dict[str, Any] = field(default_factory=dict)  # resolved training config

    def __post_init__(self) -> None:
        for t, table in self.tables.items():
            if len(self.keys.get(t, ())) != table.shape[0]:
                raise ArtifactError(
                    f"embeddings: {t}: {table.shape[0]} rows but {len(self.keys.get(t, ()))} keys"
                )
        self._index = {t: {k: i for i, k in enumerate(ks)} for t, ks in self.keys.items()}
        # Handle -> row for users known by id: a handle-only reference finds them too.
        self._handle_index: dict[str, int] = {}
        for i, h in enumerate(self.user_handles):
            if h:
                self._handle_index.setdefault(h.lstrip("@").lower(), i)
        self._normed: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ lookups
    @property
    def dim(self) -> int:
        for table in self.tables.values():
            return int(table.shape[1])
        for vec in self.relations.values():
            return int(vec.shape[0])
        return 0

    @property
    def mean(self) -> np.ndarray:
        """Mean of all rows of all tables, (dim,) float32: the paper's vector for unknown NTUs."""
        total = np.zeros(self.dim, dtype=np.float64)
        n = 0
        for table in self.tables.values():
            total += table.sum(axis=0, dtype=np.float64)
            n += table.shape[0]
        return (total / max(n, 1)).astype(np.float32)

    def index(self, node_type: str, key: str) -> int | None:
        return self._index.get(node_type, {}).get(key)

    def lookup_user(self, ref: UserRef) -> int | None:
        """Row of a user: by ``id:<id>`` first, then by handle (an id-keyed user's handle column,
        or the handle-only key ``@<handle>``)."""
        if ref.id:
            i = self.index("user", f"id:{ref.id}")
            if i is not None:
                return i
        if ref.handle:
            handle = ref.handle.lstrip("@").lower()
            i = self._handle_index.get(handle)
            if i is not None:
                return i
            return self.index("user", f"@{handle}")
        return None

    def lookup_hashtag(self, tag: str) -> int | None:
        from ntulm.posts import normalize_hashtag

        return self.index("hashtag", normalize_hashtag(tag))

    def lookup(self, node_type: str, ntu: Any) -> int | None:
        """Row of one NTU of a post in the table of its node type (``posts/ntus.py`` says which):
        a :class:`UserRef` in ``user``, a hashtag in ``hashtag``; ``None`` if unknown."""
        if node_type == "user":
            return self.lookup_user(ntu)
        if node_type == "hashtag":
            return self.lookup_hashtag(ntu)
        raise ArtifactError(f"embeddings: no lookup for node type {node_type!r}")

    def vector(self, node_type: str, key: str) -> np.ndarray | None:
        i = self.index(node_type, key)
        return None if i is None else self.tables[node_type][i]

    def _unit(self, node_type: str) -> np.ndarray:
        if node_type not in self._normed:
            t = self.tables[node_type]
            norms = np.linalg.norm(t, axis=1, keepdims=True)
            self._normed[node_type] = t / np.maximum(norms, 1e-12)
        return self._normed[node_type]

    def nearest(
        self, node_type: str, key: str, k: int = 10, among: str | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` rows of type ``among`` (default: same type) closest in cosine to ``key``."""
        among = among or node_type
        i = self.index(node_type, key)
        if i is None:
            return []
        q = self._unit(node_type)[i]
        sims = self._unit(among) @ q  # (n,)
        if among == node_type:
            sims[i] = -np.inf  # never return the query itself
        k = min(k, sims.shape[0] - (among == node_type))
        if k <= 0:
            return []
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(self.keys[among][j], float(sims[j])) for j in top]

    # ------------------------------------------------------------------ save / load
    def save(self, out_dir: str | Path, *, done: bool = True) -> None:
        """Write the artifact; ``done``: also its completion marker (``train_kge`` writes its own
        after the metrics)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        unmark(out)
        tensors = {
            f"table.{t}": np.ascontiguousarray(a, dtype=np.float32) for t, a in self.tables.items()
        }
        tensors.update(
            {
                f"relation.{r}": np.ascontiguousarray(v, dtype=np.float32)
                for r, v in self.relations.items()
            }
        )
        with atomic_path(out / TENSORS) as tmp:
            save_file(tensors, str(tmp))
        for t, ks in self.keys.items():
            cols: dict[str, Any] = {
                "node_id": pa.array(np.arange(len(ks), dtype=np.int64)),
                "key": pa.array(ks, type=pa.string()),
            }
            if t == "user":
                cols["handle"] = pa.array(self.user_handles, type=pa.string())
            with atomic_path(out / f"nodes_{t}.parquet") as tmp:
                pq.write_table(pa.table(cols), tmp)
        meta = {
            "dim": self.dim,
            "node_types": sorted(self.tables),
            "relations": sorted(self.relations),
            "config": self.config,
        }
        write_json(out / META, meta)
        if done:
            mark_done(out, "kge", self.config)

    @classmethod
    def load(cls, out_dir: str | Path) -> NTUEmbeddings:
        out = Path(out_dir)
        if not (out / TENSORS).exists() or not (out / META).exists():
            raise ArtifactError(
                f"{out}: no NTU embeddings here (expected {TENSORS} and {META}; run `ntulm train-kge`)"
            )
        meta = read_json(out / META)
        try:
            tensors = load_file(str(out / TENSORS))
        except Exception as exc:  # safetensors raises its own error types
            raise ArtifactError(f"{out / TENSORS}: unreadable: {exc}") from None
        tables, keys, relations = {}, {}, {}
        handles: list[str | None] = []
        for t in meta["node_types"]:
            path = out / f"nodes_{t}.parquet"
            if not path.exists():
                raise ArtifactError(f"{path}: missing (node vocabulary for {t})")
            nodes = pq.read_table(path)
            tables[t] = tensors[f"table.{t}"]
            keys[t] = nodes.column("key").to_pylist()
            if t == "user" and "handle" in nodes.column_names:
                handles = nodes.column("handle").to_pylist()
        for r in meta["relations"]:
            relations[r] = tensors[f"relation.{r}"]
        if not handles and "user" in keys:
            handles = [None] * len(keys["user"])
        return cls(tables, keys, relations, handles, meta.get("config", {}))

    def summary(self) -> str:
        sizes = ", ".join(f"{t}={a.shape[0]}" for t, a in sorted(self.tables.items()))
        return json.dumps({"dim": self.dim, "rows": sizes, "relations": sorted(self.relations)})
