"""How posts are read: one configuration for every command that reads posts.

``ntulm build-graph``, ``ntu-stats``, ``finetune``, ``embed``, ``evaluate`` and ``run`` read their
``--posts`` under one :class:`ReaderConfig`: the ``read`` section of a config (``read.format=...``
on the command line), or the flags :func:`ntulm.cli.add_posts_args` adds to every one of them.
The formats it offers are the readers' own (:data:`ntulm.posts.formats.REGISTRY`).

Earlier versions kept these keys flat in the graph config (``graph.format``, ``strict``,
``reader``, ...); they are still accepted there and moved into ``read`` (:func:`lift_read_keys`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator

from ntulm.config import StageConfig
from ntulm.posts.formats import FORMATS, REGISTRY

if TYPE_CHECKING:
    from ntulm.posts.readers import PostReader

DUPLICATES = ("first", "error", "keep-all")
ENGINES = ("fast", "python")

# The reader keys that earlier versions kept flat in the graph config -> their key in ``read``.
LEGACY_KEYS = {
    "format": "format",
    "strict": "strict",
    "max_text_chars": "max_text_chars",
    "duplicates": "duplicates",
    "columns": "columns",
    "labels": "labels",
    "reader": "engine",
}


class LabelTableConfig(StageConfig):
    """Labels joined from a side table onto the posts as they are read (``docs/posts.md``)."""

    path: str = Field(..., description="CSV, TSV or Parquet file of labels (gzip ok for CSV)")
    by: Literal["author", "id"] = Field(
        "author",
        description="join key: the post's author (id or handle, '@' optional, any case) or the "
        "post id",
    )
    key: str | None = Field(None, description="key column of the table (default: its first)")
    columns: dict[str, str] | None = Field(
        None,
        description="label name -> column (default: every other column under its own name)",
    )
    overwrite: bool = Field(
        False, description="the table's labels win over a post's own labels of the same name"
    )


class ReaderConfig(StageConfig):
    """How posts are read: format, bad-input policy, tabular mapping, side-table labels."""

    format: str = Field(
        "auto",
        description="input format: auto (detected from each file's content) or one of "
        f"{', '.join(FORMATS)} (the readers' own list: posts/formats.py REGISTRY)",
    )
    strict: bool = Field(False, description="fail on the first bad record instead of skipping it")
    max_text_chars: int = Field(10_000, ge=1, description="longer texts are rejected as bad input")
    duplicates: Literal[DUPLICATES] = Field(  # type: ignore[valid-type]
        "first",
        description="posts repeating an earlier post's id: keep the first (the others are "
        "rejected and counted), error, or keep-all (counted only)",
    )
    columns: dict[str, str] | str | None = Field(
        None,
        description="tabular input (CSV/TSV/Parquet): post field or label name -> column, as a "
        "mapping or 'text=content,author=user,party=party' (fields: id, text, author, author_id, "
        "created_at, hashtags, mentions, urls, media, is_retweet, retweet_of_id, "
        "retweet_of_author, reply_to_id, reply_to_user, lang; any other name is a label), or a "
        "preset: ira",
    )
    labels: list[LabelTableConfig] = Field(
        default_factory=list,
        description="side tables of labels joined onto the posts by author or post id, e.g. "
        "[{path: users.csv, key: user_id}]",
    )
    quarantine: bool = Field(
        True,
        description="write rejected records ({file, line, problem, raw}) to the command's "
        "rejected.jsonl (build-graph: in --out; run/evaluate: <out>/posts/; finetune: in --out; "
        "embed: beside --out)",
    )
    engine: Literal[ENGINES] = Field(  # type: ignore[valid-type]
        "fast",
        description="fast: vectorized readers (pyarrow, DuckDB) with the Python reference for the "
        "records they cannot decide; python: the reference readers only (same posts, slower)",
    )

    @field_validator("format")
    @classmethod
    def _format(cls, v: str) -> str:
        if v != "auto" and v not in REGISTRY:  # asked at validation: a format added is offered
            raise ValueError(f"unknown format {v!r}; use auto or one of {', '.join(REGISTRY)}")
        return v

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str] | str | None) -> dict[str, str] | str | None:
        from ntulm.posts.tabular import LayoutError, parse_columns

        try:
            parse_columns(v)
        except LayoutError as exc:
            raise ValueError(str(exc)) from None
        return v

    def reader(self, quarantine: str | Path | None = None) -> PostReader:
        """A :class:`~ntulm.posts.readers.PostReader` under this config, quarantining rejected
        records at ``quarantine`` (when the config's ``quarantine`` is on). A new read, a new
        quarantine: a file left there by an earlier read is removed (also with it off)."""
        from ntulm.posts.readers import PostReader

        if quarantine is not None:  # none of an earlier read's records, kept or not this time
            Path(quarantine).unlink(missing_ok=True)
        path = Path(quarantine) if quarantine is not None and self.quarantine else None
        return PostReader(
            format=self.format,
            strict=self.strict,
            max_text_chars=self.max_text_chars,
            quarantine_path=path,
            engine=self.engine,
            columns=self.columns,
            labels=tuple(t.model_dump() for t in self.labels),
            duplicates=self.duplicates,
        )

    def table_key(self) -> dict[str, Any]:
        """What decides the posts a read yields (for the fingerprint of a posts table): not
        ``engine`` (both give the same posts) nor ``quarantine``. The tabular keys appear only
        when set, so the fingerprints of earlier versions stay as they were."""
        key = self.model_dump(mode="json", include={"format", "strict", "max_text_chars"})
        key["duplicates"] = self.duplicates
        if self.columns or self.labels:
            key.update(self.model_dump(mode="json", include={"columns", "labels"}))
        return key


def lift_read_keys(data: Any, where: str = "") -> Any:
    """A config mapping with the flat reader keys of earlier versions (``format``, ``strict``,
    ``max_text_chars``, ``duplicates``, ``columns``, ``labels``, ``reader``) moved into its
    ``read`` section; a key given both ways with different values is an error naming both."""
    if not isinstance(data, dict) or not any(k in data for k in LEGACY_KEYS):
        return data
    data = dict(data)
    read = data.get("read", {})
    read = read.model_dump(exclude_unset=True) if isinstance(read, BaseModel) else dict(read or {})
    for old, new in LEGACY_KEYS.items():
        if old not in data:
            continue
        value = data.pop(old)
        if new in read and read[new] != value:
            raise ValueError(
                f"{where}{old} and {where}read.{new} both given; keep {where}read.{new} "
                f"({where}{old} is its old name)"
            )
        read[new] = value
    data["read"] = read
    return data
