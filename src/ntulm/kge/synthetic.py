"""A generated user-hashtag graph with planted communities, written as a graph artifact.

For tests and quick experiments without the graph stage: users and hashtags are split into
``communities`` groups and a user's edges go to hashtags of its own group with probability
``p_in`` (else to any hashtag), so good embeddings put each community's nodes together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ntulm.artifacts import mark_done, write_json

RELATIONS = ("authored", "favorited", "co-mentioned")


def write_planted_graph(
    out_dir: str | Path,
    num_users: int = 60,
    num_hashtags: int = 30,
    communities: int = 3,
    edges_per_user: int = 8,
    p_in: float = 0.9,
    relations: tuple[str, ...] = RELATIONS[:2],
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write ``edges.parquet``, ``nodes_*.parquet``, ``relations.json``, DONE.json (stage graph).

    Returns the community of each user and hashtag (``{"user": (n,), "hashtag": (m,)}``)."""
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    user_comm = np.arange(num_users) % communities
    tag_comm = np.arange(num_hashtags) % communities
    tags_of = [np.flatnonzero(tag_comm == c) for c in range(communities)]
    lhs, rhs, rel = [], [], []
    for u in range(num_users):
        for _ in range(edges_per_user):
            own = rng.random() < p_in
            pool = tags_of[user_comm[u]] if own else np.arange(num_hashtags)
            lhs.append(u)
            rhs.append(int(rng.choice(pool)))
            rel.append(relations[int(rng.integers(len(relations)))])
    edges = pa.table(
        {
            "lhs": pa.array(lhs, pa.int64()),
            "rel": pa.array(rel, pa.string()),
            "rhs": pa.array(rhs, pa.int64()),
            "weight": pa.array(np.ones(len(lhs)), pa.float32()),
        }
    )
    # Collapse duplicate (lhs, rel, rhs) edges into one with a count, as the graph stage does.
    edges = edges.group_by(["lhs", "rel", "rhs"]).aggregate([("weight", "sum")])
    edges = edges.rename_columns(["lhs", "rel", "rhs", "weight"]).sort_by(
        [("lhs", "ascending"), ("rel", "ascending"), ("rhs", "ascending")]
    )
    pq.write_table(edges, out / "edges.parquet")
    users = pa.table(
        {
            "node_id": pa.array(np.arange(num_users), pa.int64()),
            "key": pa.array([f"id:{1000 + u}" for u in range(num_users)]),
            "user_id": pa.array([str(1000 + u) for u in range(num_users)]),
            "handle": pa.array([f"user{u}" for u in range(num_users)]),
            "posts": pa.array(np.full(num_users, edges_per_user), pa.int64()),
        }
    )
    tags = pa.table(
        {
            "node_id": pa.array(np.arange(num_hashtags), pa.int64()),
            "key": pa.array([f"tag{h}" for h in range(num_hashtags)]),
            "posts": pa.array(np.ones(num_hashtags), pa.int64()),
        }
    )
    pq.write_table(users, out / "nodes_user.parquet")
    pq.write_table(tags, out / "nodes_hashtag.parquet")
    used = sorted(set(rel), key=relations.index)
    write_json(out / "relations.json", [{"name": r, "lhs": "user", "rhs": "hashtag"} for r in used])
    mark_done(out, "graph", {"synthetic": seed})
    return {"user": user_comm, "hashtag": tag_comm}
