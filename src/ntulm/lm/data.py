"""Posts -> model inputs: e_ntu per post, word-piece ids, MLM masking, padding, length grouping.

e_ntu is computed once per post (a float32 row) rather than looked up in the training loop. Each
NTU of the configured types contributes its vector, or the table mean when it is unknown; a post
with no NTUs gets the mean too (paper §3.2). The *overlap flag* records whether any NTU was known.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ntulm.lm.config import LMConfig, TextNormConfig
from ntulm.lm.text import normalize_text
from ntulm.posts.ntus import in_registry_order

if TYPE_CHECKING:
    import torch

    from ntulm.kge import NTUEmbeddings
    from ntulm.posts import Post


def post_ntu_rows(
    post: Post, ntu: NTUEmbeddings, types: Sequence[str], unknown: Collection[str] = ()
) -> list[tuple[str, int | None]]:
    """``(table, row or None)`` for each NTU of the post of the configured types, in the
    registry's order (``posts/ntus.py``); an unknown type is a :class:`ValueError`, never a
    silent mean vector. The NTUs of the types in ``unknown`` are treated as absent from the
    table (row ``None``), as those of a post whose author or hashtags the graph never saw."""
    rows: list[tuple[str, int | None]] = []
    for t in in_registry_order(types):
        assert t.node_type is not None  # checked: only types with an embedding table
        if t.name in unknown:
            rows.extend((t.node_type, None) for _ in t.values(post))
        else:
            rows.extend((t.node_type, ntu.lookup(t.node_type, v)) for v in t.values(post))
    return rows


def _mean_rows(
    ntu: NTUEmbeddings,
    n: int,
    owner: list[int],
    tables: list[str | None],
    rows: list[int],
    fill: np.ndarray,
    mean: np.ndarray | None = None,
) -> np.ndarray:
    """(n, D) float32: row j the float64 mean of the vectors of its contributions, ``fill`` where
    it has none. Contribution c belongs to output row ``owner[c]`` (non-decreasing) and is row
    ``rows[c]`` of table ``tables[c]``, or ``mean`` where the table is None. The same numbers as
    ``np.mean(parts, axis=0, dtype=np.float64)`` per row: each row's vectors are summed in order
    (``np.add.reduceat`` over its run of contributions), then divided by their count."""
    dim = fill.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    out[:] = fill
    if not owner:
        return out
    vecs = np.empty((len(owner), dim), dtype=np.float64)
    names = np.asarray([t if t is not None else "" for t in tables], dtype=object)
    at = np.asarray(rows, dtype=np.int64)
    for name in set(tables):
        sel = names == (name if name is not None else "")
        vecs[sel] = ntu.tables[name][at[sel]] if name is not None else mean
    who = np.asarray(owner, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
    sums = np.add.reduceat(vecs, starts, axis=0)
    counts = np.diff(np.r_[starts, len(who)])
    out[who[starts]] = (sums / counts[:, None]).astype(np.float32)
    return out


def ntu_vectors(
    posts: Iterable[Post], ntu: NTUEmbeddings, types: Sequence[str], unknown: Collection[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """e_ntu per post and the overlap flag: (N, D) float32, (N,) bool. ``unknown``: NTU types
    whose NTUs count as unknown (each contributes the table mean; :func:`post_ntu_rows`).
    The lookups run per post, the means over all posts at once (:func:`_mean_rows`)."""
    mean = np.asarray(ntu.mean, dtype=np.float32)
    owner: list[int] = []
    tables: list[str | None] = []
    rows: list[int] = []
    known: list[bool] = []
    n = 0
    for n, post in enumerate(posts, 1):
        seen = False
        for t, i in post_ntu_rows(post, ntu, types, unknown):
            owner.append(n - 1)
            tables.append(t if i is not None else None)
            rows.append(i if i is not None else 0)
            seen = seen or i is not None
        known.append(seen)
    vecs = _mean_rows(ntu, n, owner, tables, rows, mean, mean)
    return vecs, np.asarray(known, dtype=bool)


def concat_groups(types: Sequence[str], per_type: bool = False) -> list[list[str]]:
    """The NTU type groups a post-concat embedding appends one e_ntu each of: all ``types`` in
    one group, or with ``per_type`` each type alone, in ``types`` order."""
    return [[t] for t in types] if per_type else [list(types)]


def block_weights(
    types: Sequence[str], per_type: bool, scale: dict[str, float], dim: int
) -> np.ndarray | None:
    """The factor of each appended column, (len(groups) * dim,) float32, in the order the blocks
    of :func:`concat_groups` are appended: a type's ``scale`` weight for its own block (unnamed
    types and a block of several types: 1); None where every weight is 1."""
    if not any(w != 1.0 for w in scale.values()):
        return None
    groups = concat_groups(types, per_type)
    w = [scale.get(g[0], 1.0) if len(g) == 1 else 1.0 for g in groups]
    return np.repeat(np.asarray(w, dtype=np.float32), dim)


def check_concat_scale(
    scale: dict[str, float],
    types: Sequence[str],
    per_type: bool,
    types_are: str = "among the appended types",
    per_type_is: str = "per-type blocks (per_type)",
) -> None:
    """Raise a :class:`ValueError` for weights of types not appended, weights not > 0, or one
    weight per type where the types are appended as one mean block (needs ``per_type``). The
    messages name the caller's settings: ``types_are`` where the types come from (a pipeline
    variant: ``in ntu_types``), ``per_type_is`` the per-type setting (``concat: per_type``)."""
    if not scale:
        return
    unknown = sorted(set(scale) - set(types))
    if unknown:
        raise ValueError(f"concat_scale: {unknown} not {types_are} {list(types)}")
    if not per_type and len(types) > 1:
        raise ValueError(f"concat_scale: one weight per type needs {per_type_is}")
    bad = {t: w for t, w in scale.items() if not w > 0}
    if bad:
        raise ValueError(f"concat_scale: weights must be > 0, got {bad}")


def appended_vectors(
    posts: Iterable[Post],
    ntu: NTUEmbeddings,
    types: Sequence[str],
    per_type: bool = False,
    unknown: Collection[str] = (),
) -> np.ndarray:
    """The NTU rows a post-concat embedding appends: :func:`ntu_vectors` of ``types`` (N, D),
    or with ``per_type`` that of each type alone, side by side in ``types`` order (N, K*D)."""
    posts = list(posts)
    groups = concat_groups(types, per_type)
    return np.concatenate([ntu_vectors(posts, ntu, g, unknown)[0] for g in groups], axis=1)


def ntu_type_vectors(
    posts: Iterable[Post], ntu: NTUEmbeddings, types: Sequence[str], unknown: Collection[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Per-type e_ntu (``ntu_tokens=per_type``): (N, K, D) float32, row k the mean of the post's
    *known* NTUs of ``types[k]``, NaN where it has none (absent); and the overlap flag, (N,) bool.
    The types in ``unknown`` count as unknown (absent) for every post."""
    k_types = len(types)
    owner: list[int] = []
    tables: list[str | None] = []
    rows: list[int] = []
    n = 0
    for n, post in enumerate(posts, 1):
        for k, t in enumerate(types):
            for tb, i in post_ntu_rows(post, ntu, [t], unknown):
                if i is not None:
                    owner.append((n - 1) * k_types + k)
                    tables.append(tb)
                    rows.append(i)
    absent = np.full(ntu.dim, np.nan, dtype=np.float32)
    e = _mean_rows(ntu, n * k_types, owner, tables, rows, absent).reshape(n, k_types, ntu.dim)
    return e, ~np.isnan(e).all(axis=(1, 2))


def ntu_inputs(
    posts: Iterable[Post], ntu: NTUEmbeddings, cfg: LMConfig, unknown: Collection[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """The model's NTU input per post: :func:`ntu_vectors` (N, D) for ``ntu_tokens=mean``,
    :func:`ntu_type_vectors` (N, K, D) for ``per_type``; and the overlap flag. ``unknown``: NTU
    types treated as unknown (as for a post whose author the graph never saw)."""
    if cfg.ntu_tokens == "per_type":
        return ntu_type_vectors(posts, ntu, cfg.ntu_types, unknown)
    return ntu_vectors(posts, ntu, cfg.ntu_types, unknown)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(n)`` without fixed points for n >= 2 (Sattolo's algorithm: a
    uniformly drawn single n-cycle); ``[0]`` for n = 1, where none exists."""
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: i never keeps its own place
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def finetune_ntu_inputs(
    posts: Sequence[Post], ntu: NTUEmbeddings, cfg: LMConfig
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ntu_inputs` for fine-tuning. With ``lm.ntu_shuffle`` (a negative control of the
    fine-tune) each post gets another post's NTU input: rows permuted by a seeded derangement
    (``cfg.seed``), the overlap flags with them, before the training/held-out split, so the model
    trains and is scored on NTU tokens that carry nothing about their post."""
    e, overlap = ntu_inputs(posts, ntu, cfg)
    if cfg.ntu_shuffle:
        perm = derangement(len(e), np.random.default_rng(cfg.seed))
        e, overlap = e[perm], overlap[perm]
    return e, overlap


def tokenize(
    texts: Sequence[str], tokenizer: Any, max_length: int, norm: TextNormConfig
) -> list[np.ndarray]:
    """Normalised, truncated word-piece ids with [CLS]/[SEP], one int32 array per post.

    A tokenizer backed by Hugging Face ``tokenizers`` is called through a private copy of its
    Rust tokenizer set to truncate at ``max_length`` (:func:`rust_tokenizer`), with
    ``encode_batch_fast`` (no character offsets): the same ids as the transformers call, about
    2.5x faster on tweets; any other tokenizer through its ``__call__``."""
    clean = [normalize_text(t, norm) for t in texts]
    rust = rust_tokenizer(tokenizer, max_length)
    if rust is not None:
        return [np.asarray(e.ids, dtype=np.int32) for e in rust.encode_batch_fast(clean)]
    enc = tokenizer(clean, truncation=True, max_length=max_length, add_special_tokens=True)
    return [np.asarray(ids, dtype=np.int32) for ids in enc["input_ids"]]


_RUST: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()


def rust_tokenizer(tokenizer: Any, max_length: int) -> Any | None:
    """A copy of ``tokenizer``'s Rust tokenizer that truncates at ``max_length`` (its own
    truncation side) and never pads, kept per tokenizer object; None where it has none, or where
    ``tokenizers`` lacks ``encode_batch_fast`` (before 0.21). A copy: the transformers wrapper
    resets its backend's truncation and padding on every call, so a shared one would race."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    try:
        per_length = _RUST.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable
        return None
    rust = per_length.get(max_length)
    if rust is None:
        from tokenizers import Tokenizer

        rust = Tokenizer.from_str(backend.to_str())
        rust.no_padding()
        side = getattr(tokenizer, "truncation_side", "right")
        rust.enable_truncation(max_length, strategy="longest_first", direction=side)
        per_length[max_length] = rust
    return rust


def pad(seqs: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic padding to the longest sequence of the batch: ids and mask, (B, T) int64."""
    import torch  # here, not at the top: the pipeline's own process imports this module

    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def mask_tokens(
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor,  # (B, T)
    tokenizer: Any,
    prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: ``prob`` of the real non-special tokens are targets; of those 80% become
    [MASK], 10% a random token, 10% stay. Returns masked ids and labels (-100 = not a target)."""
    import torch

    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for sid in tokenizer.all_special_ids:
        special |= input_ids == sid
    candidate = attention_mask.bool() & ~special
    chosen = (torch.rand(input_ids.shape, generator=generator) < prob) & candidate
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (roll < 0.8)
    to_random = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=generator)
    out = torch.where(to_mask, torch.full_like(input_ids, tokenizer.mask_token_id), input_ids)
    out = torch.where(to_random, random_ids, out)
    return out, labels


def fixed_eval_masks(
    seqs: Sequence[np.ndarray], tokenizer: Any, prob: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Masked ids and labels per held-out post, drawn post by post from one seeded generator, so
    every model evaluated on the same posts sees the identical masked positions."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in seqs:
        ids = torch.from_numpy(s.astype(np.int64))[None]
        masked, labels = mask_tokens(ids, torch.ones_like(ids), tokenizer, prob, gen)
        out.append((masked[0].numpy().astype(np.int32), labels[0].numpy().astype(np.int32)))
    return out


def length_grouped_batches(
    lengths: np.ndarray,
    batch_size: int,
    group_size: int = 50,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Index batches of similar length (little padding). With ``rng``: shuffle, sort within
    mega-batches of ``group_size`` batches, shuffle the batch order (training). Without: sort
    everything by length, longest first (inference)."""
    if rng is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    mega = batch_size * group_size
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def training_batches(
    lengths: np.ndarray, cfg: LMConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """One epoch of index batches: length-grouped (``cfg.group_by_length``) or random."""
    if cfg.group_by_length:
        return length_grouped_batches(lengths, cfg.batch_size, cfg.group_size, rng)
    order = rng.permutation(len(lengths))
    return [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
