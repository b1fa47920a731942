"""Post embeddings from a fine-tuned model (paper §3.3): embed_ntulm = mean of the final hidden
states ``[z_0 .. z_n, z_ntu]`` over the valid tokens and the NTU token, with the model frozen.

- :func:`encode` is the Python verb (sentence-transformers style), over post records (``Post`` or
  dicts of the JSON Lines schema), or texts with their e_ntu rows (a text without NTUs gets the mean NTU vector);
- ``concat_ntu=True`` gives the BERT-post-concat baseline: ``[mean-pooled embedding ; e_ntu]``;
- ``pooling="mean+ntu"`` (not the paper's; for NTULM models) gives ``[mean over the word pieces ;
  z_ntu]``, 2H wide: in the mean the NTU token weighs 1/(n+1), and on IRA the NTU slot's final
  state alone carries far more of the author signal than the pooled mean
  (``benchmarks/diagnose_ntu.py``);
- ``pooling="gate"`` (models fine-tuned with ``pooling_gate``): a learned sigmoid gate mixing the
  word-piece mean and the NTU state, H wide (:func:`pool`; with per-type tokens the NTU state is
  the mean of the attended NTU slots);
- :func:`embed_to_parquet` streams posts from files into a Parquet file of
  ``(id, embedding, overlap)`` chunk by chunk, so memory does not grow with the number of posts;
  a thread reads and prepares the next chunk (:func:`prepare`: tokens, NTU inputs, appended
  vectors) while the encoder runs on this one (:func:`encode_prepared`).

Speed: posts are sorted by length and batched (dynamic padding, results returned in input order;
sorted batches are mostly of one length, so they need no attention mask); ``dtype="bfloat16"``
runs the encoder under bf16 autocast (matmuls in bf16, LayerNorm and softmax in float32). A
bf16 *copy* of the weights was tried instead: no faster within the noise of this shared machine
and further from float32 (min cosine 0.998 vs 0.9997 on IRA), so it was not kept.
``compile=True`` (an option, off by default) runs the encoder with eager attention under
``torch.compile(dynamic=True)``: inductor fuses the element-wise work between the matmuls, 1.20x
on machine D in bf16 (``benchmarks/encode_variants.py``); it needs a C++ compiler and compiles
once per process (some seconds), and its embeddings differ from the default path's by bf16
rounding (min cosine 0.9987 on IRA).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from ntulm.artifacts import atomic_path
from ntulm.errors import ConfigError
from ntulm.lm.config import resolve_dtype
from ntulm.lm.data import (
    appended_vectors,
    block_weights,
    check_concat_scale,
    length_grouped_batches,
    ntu_inputs,
    tokenize,
)
from ntulm.memory import TRIM_EVERY, trim
from ntulm.posts import Post

if TYPE_CHECKING:
    from ntulm.lm.model import NTULM

log = logging.getLogger(__name__)


def as_posts(posts: Sequence[Post | str | dict[str, Any]]) -> list[Post | str]:
    """Posts as :func:`encode` takes them: :class:`Post` records and plain texts as they are,
    dicts read as records of the JSON Lines schema (``Post.from_json``, exactly as the file
    reader reads a line; an error names the item and the field)."""
    if isinstance(posts, (str, dict, Post)):
        raise TypeError("posts: expected a list of posts, texts or dicts, got a single one")
    out: list[Post | str] = []
    for i, p in enumerate(posts):
        if isinstance(p, (Post, str)):
            out.append(p)
        elif isinstance(p, dict):
            try:
                out.append(Post.from_json(p))
            except ValueError as exc:
                raise ValueError(f"posts[{i}]: {exc}") from None
        else:
            raise TypeError(
                f"posts[{i}]: expected a Post, a text or a dict, got {type(p).__name__}"
            )
    return out


def _records(posts: Sequence[Post | str]) -> list[Post]:
    """Post records for the NTU lookup: a plain text is a post without NTUs."""
    return [p if isinstance(p, Post) else Post(id="", text=p) for p in posts]


def post_ntus(
    model: NTULM, posts: Sequence[Post | str], ntus: np.ndarray | None = None, need: bool = False
) -> tuple[np.ndarray | None, np.ndarray]:
    """e_ntu rows and overlap flags for ``posts``: from ``ntus`` if given, else looked up in the
    model's NTU embeddings (strings have no NTUs: mean vector, overlap False)."""
    n = len(posts)
    if ntus is not None:
        ntus = np.asarray(ntus, dtype=np.float32)
        if ntus.shape[0] != n:
            raise ValueError(f"ntus: {ntus.shape[0]} rows for {n} posts")
        want = 3 if model.typed is not None else 2
        if ntus.ndim != want:
            shape = "(N, K, D) per-type" if want == 3 else "(N, D) mean"
            raise ConfigError(f"ntus: this model takes {shape} NTU rows, got shape {ntus.shape}")
        return ntus, np.ones(n, dtype=bool)
    if model.ntu is None:
        if need:
            raise ConfigError(
                "this model needs NTU embeddings: load it with ntu=... (or --ntu DIR)"
            )
        return None, np.zeros(n, dtype=bool)
    recs = _records(posts)
    assert model.cfg is not None
    return ntu_inputs(recs, model.ntu, model.cfg)


def appended_ntus(
    model: NTULM,
    posts: Sequence[Post | str],
    ntus: np.ndarray | None,
    types: Sequence[str],
    per_type: bool = False,
) -> np.ndarray:
    """The appended vectors of ``concat_types``: the mean of each post's NTUs of ``types`` in
    the model's NTU embeddings (the table mean where it has none), (N, D) float32; with
    ``per_type`` that vector for each type alone, side by side in ``types`` order, (N, K*D)."""
    from ntulm.posts.ntus import check_ntu_types

    types = check_ntu_types(list(types))
    if ntus is not None:
        raise ConfigError("concat_types: looks NTUs up in the posts; pass posts, not ntus= rows")
    if model.ntu is None:
        raise ConfigError("concat_types: needs NTU embeddings (ntu=... or --ntu DIR)")
    return appended_vectors(_records(posts), model.ntu, types, per_type)


DTYPES = ("float32", "bfloat16", "auto")


def check_dtype(dtype: str) -> str:
    """The resolved inference dtype (``auto``: bfloat16 where the CPU/GPU has native bf16)."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not float32, bfloat16 or auto")
    return dtype


def pad_batch(
    tokens: Sequence[np.ndarray], idx: np.ndarray, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask of the posts ``idx``, padded to the longest: (B, T) int64, without a Python
    loop over the posts (one concatenate and one scatter)."""
    lens = np.fromiter((len(tokens[i]) for i in idx), dtype=np.int64, count=len(idx))
    width = int(lens.max())
    mask = np.arange(width)[None, :] < lens[:, None]  # (B, T)
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    ids[mask] = np.concatenate([tokens[i] for i in idx])  # row-major, as the mask is
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def check_compile() -> None:
    """Raise a :class:`ConfigError` where ``torch.compile``'s CPU backend has no C++ compiler."""
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None and shutil.which("c++") is None:
        raise ConfigError(
            f"compile: torch.compile needs a C++ compiler ({cxx!r} or 'c++' on PATH, or set CXX); "
            "install one (e.g. apt install g++) or encode without compile"
        )


@contextmanager
def compiled_encoder(model: NTULM) -> Iterator[None]:
    """Within the block the model's encoder runs compiled: transformers' eager attention (bmm
    and softmax, which inductor fuses; SDPA's CPU kernel is slow for tweet-length sequences)
    under ``torch.compile(dynamic=True)``, so one graph serves every batch shape. The compiled
    function is kept on the model (compiled once per process, on first use); the attention
    setting and the encoder's forward are restored on exit, so training is unaffected."""
    check_compile()
    enc = model.base.encoder
    fn = model.__dict__.get("_compiled_encoder")
    if fn is None:
        fn = torch.compile(type(enc).forward.__get__(enc), dynamic=True)
        model.__dict__["_compiled_encoder"] = fn  # not a module or a parameter: never saved
    before = model.base.config._attn_implementation
    model.base.set_attn_implementation("eager")
    enc.forward = fn
    try:
        yield
    finally:
        del enc.forward  # the class's forward again
        model.base.set_attn_implementation(before)


@torch.inference_mode()
def encode(
    model: NTULM,
    posts: Sequence[Post | str | dict[str, Any]],
    *,
    ntus: np.ndarray | None = None,
    batch_size: int = 128,
    show_progress_bar: bool = False,
    concat_ntu: bool | None = None,
    return_overlap: bool = False,
    dtype: str = "float32",
    pooling: str = "mean",
    text_only: bool = False,
    concat_types: Sequence[str] | None = None,
    concat_per_type: bool = False,
    concat_scale: dict[str, float] | None = None,
    compile: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``posts``, (N, H) float32 (H + ntu_dim with ``concat_ntu``), in input order.

    ``posts`` are :class:`Post` records, dicts of the JSON Lines schema (``{"id": "1", "text":
    "...", "author": "alice", "hashtags": ["nlp"]}``, read as the file reader reads a line) or
    plain texts (no NTUs: the mean vector); ``ntus`` optionally gives each one's e_ntu row
    directly, (N, ntu_dim). With ``return_overlap`` also returns the overlap flags, (N,) bool.
    ``dtype="bfloat16"`` runs the encoder under bfloat16 autocast: about 3x faster than float32
    on CPUs with native bf16 (cosine to float32 above 0.999); ``"auto"`` picks bfloat16 there and
    float32 elsewhere. The output stays float32. ``pooling`` is ``"mean"`` (the paper),
    ``"mean+ntu"`` or ``"gate"`` (see :func:`pool`). ``concat_ntu`` appends an NTU vector
    (BERT-post-concat for a no-NTU model). By default (``None``) the recommended embedding
    (:func:`recommended_concat`): with ``mean`` pooling, for a model that carries NTU embeddings
    (per-type models included), the post author's vector is appended (an unknown author: the
    table mean; where the table holds no users, or ``ntus=`` rows are given, the post's e_ntu
    instead); off otherwise.
    ``concat_ntu=True`` alone appends the post's e_ntu (the mean over the model's NTU types;
    author+hashtag for a no-NTU model), the paper's BERT-post-concat.
    ``concat_types`` (with ``concat_ntu``): the NTU types whose mean vector is appended, e.g.
    ``["author", "hashtag"]``; looked up in the model's NTU embeddings, so it needs post records,
    not ``ntus=`` rows. ``concat_per_type=True`` appends each type's vector side by side instead
    of their mean (K x ntu_dim: the author's and the hashtags' vectors kept apart).
    ``concat_scale`` (with ``concat_types``) multiplies each type's appended block by a weight,
    e.g. ``{"hashtag": 0.1}`` with ``concat_types=["author", "hashtag"], concat_per_type=True``
    (the option for hashtag tasks, design round 11): it changes cosine rankings, not what a
    classifier that standardizes its inputs sees.
    ``text_only=True`` runs the encoder on the
    word pieces alone, without the NTU token (mean pooling): what transformers or
    sentence-transformers compute from ``model/`` or an ``ntulm export``.
    ``compile=True`` runs the encoder compiled (:func:`compiled_encoder`): faster on CPUs, needs
    a C++ compiler, compiles on first use; embeddings equal up to bf16 rounding.
    """
    check_pooling(model, pooling)
    if text_only and pooling != "mean":
        raise ConfigError(f"pooling: {pooling!r} needs the NTU token; text_only takes 'mean'")
    posts = as_posts(posts)
    _check_concat_options(concat_types, concat_per_type, concat_scale)
    concat_ntu, concat_types = _resolve_concat(
        model, pooling, concat_ntu, concat_types, text_only, rows_given=ntus is not None
    )
    inputs = prepare(
        model,
        posts,
        ntus,
        concat_ntu,
        concat_types,
        concat_per_type,
        text_only=text_only,
        concat_scale=concat_scale,
    )
    out = encode_prepared(
        model,
        inputs,
        batch_size=batch_size,
        dtype=dtype,
        pooling=pooling,
        text_only=text_only,
        compile=compile,
        show_progress_bar=show_progress_bar,
    )
    return (out, inputs.overlap) if return_overlap else out


@dataclass
class Prepared:
    """A batch of posts made ready for the encoder (:func:`prepare`): everything but the
    encoder's own work, so it can run ahead of the encoder on other posts (:func:`embed_to_parquet`
    prepares the next chunk in a thread while the encoder runs)."""

    tokens: list[np.ndarray]  # word-piece ids per post
    e_ntu: np.ndarray | None  # the NTU input per post: (N, D), per-type (N, K, D), or None
    overlap: np.ndarray  # (N,) bool: any NTU known
    appended: np.ndarray | None  # the vectors appended to the embedding (N, W), or None


def prepare(
    model: NTULM,
    posts: Sequence[Post | str],
    ntus: np.ndarray | None,
    concat_ntu: bool,
    concat_types: Sequence[str] | None,
    concat_per_type: bool,
    text_only: bool = False,
    concat_scale: dict[str, float] | None = None,
) -> Prepared:
    """Tokens, NTU inputs, overlap flags and appended vectors of ``posts`` (resolved options)."""
    assert model.cfg is not None and model.tokenizer is not None
    need = (model.use_ntu and not text_only) or concat_ntu
    e_ntu, overlap = post_ntus(model, posts, ntus, need=need)
    texts = [p.text if isinstance(p, Post) else p for p in posts]
    tokens = tokenize(texts, model.tokenizer, model.cfg.max_length, model.cfg.text)
    appended = None
    if concat_ntu:
        appended = e_ntu
        if concat_types is not None:
            appended = appended_ntus(model, posts, ntus, concat_types, concat_per_type)
            assert model.ntu is not None  # appended_ntus checked it
            w = block_weights(concat_types, concat_per_type, concat_scale or {}, model.ntu.dim)
            appended = appended if w is None else (appended * w).astype(np.float32)
        assert appended is not None
        if appended.ndim != 2:
            raise ConfigError("concat_ntu: needs a model with mean NTU vectors (not per_type)")
    return Prepared(tokens, e_ntu, overlap, appended)


@torch.inference_mode()
def encode_prepared(
    model: NTULM,
    inputs: Prepared,
    *,
    batch_size: int = 128,
    dtype: str = "float32",
    pooling: str = "mean",
    text_only: bool = False,
    compile: bool = False,
    show_progress_bar: bool = False,
) -> np.ndarray:
    """The embeddings of prepared posts (:func:`encode`'s output, in their order)."""
    assert model.tokenizer is not None
    model.eval()
    device = next(model.parameters()).device
    bf16 = resolve_dtype(check_dtype(dtype), device.type) == "bfloat16"
    tokens, e_ntu = inputs.tokens, inputs.e_ntu
    width = model.hidden_size * (2 if pooling == "mean+ntu" else 1)
    out = np.zeros((len(tokens), width), dtype=np.float32)
    lengths = np.array([len(t) for t in tokens])
    batches = length_grouped_batches(lengths, batch_size)  # longest first, little padding
    inject = model.use_ntu and not text_only
    with compiled_encoder(model) if compile else nullcontext():
        for k, idx in enumerate(
            tqdm(batches, desc="encode", disable=not show_progress_bar, unit="batch"), 1
        ):
            if k % TRIM_EVERY == 0:
                trim()  # freed activations of other batch shapes back to the OS (memory.py)
            ids, mask = pad_batch(tokens, idx, model.tokenizer.pad_token_id)
            assert e_ntu is not None or not inject
            e = torch.from_numpy(e_ntu[idx]).to(device) if inject else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                hidden, full_mask = model.hidden_states(
                    ids.to(device), mask.to(device), e, text_only=text_only
                )  # (B, T+1, H); (B, T, H) without the NTU token
            pooled = pool(model, hidden.float(), full_mask, ids.shape[1], pooling)
            out[idx] = pooled.float().cpu().numpy()
    if inputs.appended is not None:
        out = np.concatenate([out, inputs.appended], axis=1)
    return out


POOLINGS = ("mean", "mean+ntu", "gate")


def pool(
    model: NTULM,
    hidden: torch.Tensor,  # (B, T+K, H) final hidden states
    mask: torch.Tensor,  # (B, T+K): real word pieces, then the attended NTU tokens
    t: int,  # number of word-piece slots; NTU tokens sit at t .. t+K-1
    pooling: str = "mean",
) -> torch.Tensor:
    """Post embedding: ``mean`` over all attended slots (the paper), (B, H); ``mean+ntu`` =
    [word-piece mean ; NTU state], (B, 2H); ``gate`` = the model's learned gate of the two, (B, H).
    The NTU state is the mean of the attended NTU slots (the one NTU token's state in the paper's
    design); a post without attended NTU tokens gets its word-piece mean there."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T+K, 1)
    if pooling == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    words = (hidden[:, :t] * m[:, :t]).sum(1) / m[:, :t].sum(1).clamp(min=1)  # (B, H)
    n_ntu = m[:, t:].sum(1)  # (B, 1)
    ntu_state = (hidden[:, t:] * m[:, t:]).sum(1) / n_ntu.clamp(min=1)
    ntu_state = torch.where(n_ntu > 0, ntu_state, words)
    if pooling == "mean+ntu":
        return torch.cat([words, ntu_state], dim=1)
    assert model.gate is not None
    return model.gate(words, ntu_state)


def check_pooling(model: NTULM, pooling: str) -> None:
    """Raise a :class:`ConfigError` for an unknown pooling or ``mean+ntu`` without an NTU token."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling: {pooling!r} is not one of {', '.join(POOLINGS)}")
    if pooling == "mean+ntu" and not model.use_ntu:
        raise ConfigError("pooling: 'mean+ntu' needs a model with the NTU token (not a no-NTU one)")
    if pooling == "gate" and model.gate is None:
        raise ConfigError("pooling: 'gate' needs a model fine-tuned with pooling_gate=true")


RECOMMENDED_TYPES = ("author",)


def recommended_types(model: NTULM) -> list[str] | None:
    """The NTU types the recommended embedding appends: the author's vector alone (an unknown
    author: the table mean) where the model's NTU embeddings hold users, else None (the model's
    own e_ntu). Design round 4 and its 3-seed test (``benchmarks/results/fusion/final_author``):
    against the author+hashtag mean it wins account category and MAP, loses hashtag Recall@10,
    and drops the hate/offensive losses the IRA-graph hashtag vectors caused on TweetEval."""
    from ntulm.posts.ntus import in_registry_order

    if model.ntu is None:
        return None
    tables = {t.node_type for t in in_registry_order(RECOMMENDED_TYPES)}  # the author: "user"
    if any(len(model.ntu.tables.get(str(t), ())) == 0 for t in tables):
        return None
    return list(RECOMMENDED_TYPES)


def recommended_concat(model: NTULM, pooling: str = "mean") -> bool:
    """Whether the recommended embedding of ``model`` appends an NTU vector: with the paper's
    ``mean`` pooling, for a model that carries NTU embeddings and either holds users (the author's
    vector, :func:`recommended_types`; also for a no-NTU text model: BERT + the author's vector)
    or injects one mean NTU vector (its e_ntu). Chosen on validation splits over the fusion
    designs (``benchmarks/results/fusion/``): mean pooling keeps the text's skill, the appended
    raw vector keeps the NTU signal the pooled mean dilutes."""
    if pooling != "mean" or model.ntu is None:
        return False
    if recommended_types(model) is not None:  # per-type models too (final_pertype, 3 seeds)
        return True
    return model.use_ntu and model.typed is None  # its one e_ntu (a per-type model has K)


def _resolve_concat(
    model: NTULM,
    pooling: str,
    concat_ntu: bool | None,
    concat_types: Sequence[str] | None,
    text_only: bool = False,
    rows_given: bool = False,
) -> tuple[bool, list[str] | None]:
    """Whether to append a vector, and of which NTU types (None: the model's own e_ntu): as
    asked; by default the recommended embedding's choice (the text path alone appends nothing);
    always when ``concat_types`` names what to append. ``concat_ntu=True`` alone appends e_ntu,
    as does the default where the caller gives the e_ntu rows (``rows_given``)."""
    if concat_types is not None:
        if concat_ntu is False:
            raise ConfigError("concat_types: given with concat_ntu=False (nothing is appended)")
        return True, list(concat_types)
    if concat_ntu is None:
        if text_only or not recommended_concat(model, pooling):
            return False, None
        if rows_given:  # the given rows are e_ntu; a per-type model's (N, K, D) are not appended
            return model.typed is None, None
        return True, recommended_types(model)
    return concat_ntu, None


def _check_concat_options(
    concat_types: Sequence[str] | None,
    concat_per_type: bool,
    concat_scale: dict[str, float] | None = None,
) -> None:
    if concat_per_type and concat_types is None:
        raise ConfigError("concat_per_type: needs concat_types, the NTU types to append apart")
    if concat_scale:
        if concat_types is None:
            raise ConfigError("concat_scale: needs concat_types, the NTU types it weighs")
        try:
            check_concat_scale(concat_scale, concat_types, concat_per_type)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def output_dim(
    model: NTULM,
    pooling: str = "mean",
    concat_ntu: bool | None = None,
    concat_types: Sequence[str] | None = None,
    concat_per_type: bool = False,
) -> int:
    """Width of :func:`encode`'s output for these options."""
    if concat_types is not None:
        concat_ntu = True
    elif concat_ntu is None:
        concat_ntu = recommended_concat(model, pooling)
    slots = len(concat_types) if concat_per_type and concat_types is not None else 1
    ntu = model.ntu.dim * slots if concat_ntu and model.ntu is not None else 0
    return model.hidden_size * (2 if pooling == "mean+ntu" else 1) + ntu


def _chunks(items: Iterable[tuple[Post, str]], size: int) -> Iterator[list[Post]]:
    chunk: list[Post] = []
    for post, _src in items:
        chunk.append(post)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def embed_to_parquet(
    model: NTULM,
    posts: Iterable[tuple[Post, str]],
    out_file: str | Path,
    *,
    batch_size: int = 128,
    chunk_posts: int = 16384,
    concat_ntu: bool | None = None,
    show_progress_bar: bool = False,
    limit: int = 0,
    dtype: str = "float32",
    pooling: str = "mean",
    concat_types: Sequence[str] | None = None,
    concat_per_type: bool = False,
    concat_scale: dict[str, float] | None = None,
    compile: bool = False,
    prefetch: bool = True,
) -> int:
    """Stream ``(post, source)`` pairs into ``out_file`` (Parquet: id, embedding, overlap), one
    row group per chunk of ``chunk_posts``; written atomically. Returns the number of posts.
    Posts are sorted by length within each chunk (a larger chunk pads less). With ``prefetch``
    (the default) a thread reads and prepares the next chunk (:func:`prepare`: parsing,
    tokenizing, NTU lookups) while the encoder runs on this one (:func:`~ntulm.workers.prefetched`);
    the same embeddings either way."""
    from ntulm.workers import prefetched

    check_pooling(model, pooling)
    _check_concat_options(concat_types, concat_per_type, concat_scale)
    concat_ntu, concat_types = _resolve_concat(model, pooling, concat_ntu, concat_types)
    dim = output_dim(model, pooling, concat_ntu, concat_types, concat_per_type)
    schema = pa.schema(
        [("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim)), ("overlap", pa.bool_())]
    )

    def prepared() -> Iterator[tuple[list[Post], Prepared]]:
        n = 0
        for chunk in _chunks(posts, chunk_posts):
            if limit and n + len(chunk) > limit:
                chunk = chunk[: limit - n]
            yield (
                chunk,
                prepare(
                    model,
                    chunk,
                    None,
                    concat_ntu,
                    concat_types,
                    concat_per_type,
                    concat_scale=concat_scale,
                ),
            )
            n += len(chunk)
            if limit and n >= limit:
                break

    n = 0
    bar = tqdm(desc="embed", disable=not show_progress_bar, unit="post")
    source = prefetched(prepared(), name="embed-prefetch") if prefetch else prepared()
    # no dictionary encoding: unique ids and float vectors gain nothing from it, and trying it
    # cost 7 us a post (two thirds of the writing) for 584-wide vectors
    writer_opts = {"use_dictionary": False}
    with atomic_path(out_file) as tmp, pq.ParquetWriter(tmp, schema, **writer_opts) as writer:
        for chunk, inputs in source:
            emb = encode_prepared(
                model, inputs, batch_size=batch_size, dtype=dtype, pooling=pooling, compile=compile
            )
            flat = pa.array(emb.reshape(-1), type=pa.float32())
            table = pa.table(
                {
                    "id": pa.array([p.id for p in chunk], type=pa.string()),
                    "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
                    "overlap": pa.array(inputs.overlap, type=pa.bool_()),
                },
                schema=schema,
            )
            writer.write_table(table)
            n += len(chunk)
            bar.update(len(chunk))
    bar.close()
    log.info("%d post embeddings (dim %d) -> %s", n, dim, out_file)
    return n
