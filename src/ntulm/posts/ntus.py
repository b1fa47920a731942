"""The NTU types: one registry of what each reads from a post, the graph node type it becomes, and
so the NTU embedding table it is looked up in.

Every stage asks this table: the graph SQL (``graph/sql.py``: which post fields give user and
hashtag nodes) and NTU coverage (``graph/coverage.py``), the LM's e_ntu (``lm/data.py``), its
config and the pipeline's variants (validation), the NTU embeddings' lookup
(``kge/embeddings.py``). Adding a type means a row here (and a test); a type without a node type
is read from posts but has no embedding table, so it cannot be injected.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ntulm.posts.schema import Post


@dataclass(frozen=True)
class NTUType:
    name: str  # as configs spell it (``ntu_types: [author, hashtag]``)
    field: str  # the Post field it reads (one value or a list)
    node_type: str | None  # graph node type = NTU embedding table; None: not in the graph
    description: str

    def values(self, post: Post) -> list[Any]:
        """The post's NTUs of this type: :class:`UserRef` for users, strings otherwise."""
        v = getattr(post, self.field)
        if v is None:
            return []
        return list(v) if isinstance(v, list) else [v]


# In this order a post's NTUs enter its e_ntu (the mean is taken in float64 over this order).
REGISTRY: dict[str, NTUType] = {
    t.name: t
    for t in (
        NTUType("author", "author", "user", "the post's author"),
        NTUType("mention", "mentions", "user", "users mentioned in the post"),
        NTUType("hashtag", "hashtags", "hashtag", "the post's hashtags (normalised)"),
        NTUType("url", "urls", None, "links (expanded where the source gives them)"),
        NTUType("media", "media", None, "attached media"),
    )
}
NTU_TYPES = tuple(REGISTRY)
EMBEDDED_NTU_TYPES = tuple(n for n, t in REGISTRY.items() if t.node_type is not None)


def check_ntu_types(types: Iterable[str], *, allow_empty: bool = False) -> list[str]:
    """``types`` de-duplicated, in the given order; a :class:`ValueError` naming every type
    that is unknown or has no NTU embedding table."""
    types = list(types)
    bad = [t for t in types if t not in EMBEDDED_NTU_TYPES]
    if bad:
        no_table = [t for t in bad if t in REGISTRY]
        why = (
            f" ({', '.join(no_table)}: read from posts, but no NTU embedding table)"
            if no_table
            else ""
        )
        raise ValueError(
            f"unknown NTU type(s) {bad}{why}; use some of {', '.join(EMBEDDED_NTU_TYPES)}"
        )
    if not types and not allow_empty:
        raise ValueError("at least one NTU type (or use_ntu=false)")
    return list(dict.fromkeys(types))


def in_registry_order(types: Iterable[str]) -> tuple[NTUType, ...]:
    """The registry rows of ``types`` (checked), in registry order."""
    return _in_order(tuple(types))


@functools.lru_cache(maxsize=64)  # asked once per post: check each list of types once
def _in_order(types: tuple[str, ...]) -> tuple[NTUType, ...]:
    wanted = set(check_ntu_types(types, allow_empty=True))
    return tuple(t for name, t in REGISTRY.items() if name in wanted)


def node_types() -> tuple[str, ...]:
    """The graph node types of the registry, in registry order (``user``, ``hashtag``)."""
    return tuple(dict.fromkeys(t.node_type for t in REGISTRY.values() if t.node_type))


def node_fields(node_type: str) -> tuple[str, ...]:
    """The post fields whose values become nodes of ``node_type``, in registry order."""
    return tuple(t.field for t in REGISTRY.values() if t.node_type == node_type)
