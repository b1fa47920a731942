"""Configuration of the graph stage (paper §3.1, Figure 2)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ntulm.config import StageConfig

Relation = Literal["authored", "favorited", "co_mentioned", "retweeted", "replied"]
ALL_RELATIONS: tuple[Relation, ...] = (
    "authored",
    "favorited",
    "co_mentioned",
    "retweeted",
    "replied",
)
PAPER_RELATIONS: tuple[Relation, ...] = ("authored", "favorited", "co_mentioned")


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


class GraphConfig(StageConfig):
    """How posts become a user-hashtag graph. Every relation goes user -> hashtag."""

    relations: list[Relation] = Field(
        default=list(ALL_RELATIONS),
        description="edge types to build; the paper uses authored, favorited, co_mentioned",
    )
    weighting: Literal["count", "dedup"] = Field(
        default="count",
        description="edge weight: number of posts behind the edge (count) or always 1 (dedup)",
    )
    min_user_hashtags: int = Field(
        default=0,
        ge=0,
        description="keep users with at least this many unique hashtags (paper: 10)",
    )
    max_user_hashtags: int | None = Field(
        default=None,
        ge=1,
        description="keep users with at most this many unique hashtags (paper: 100)",
    )
    min_hashtag_posts: int = Field(
        default=1, ge=1, description="keep hashtags used in at least this many posts"
    )
    format: Literal["auto", "jsonl", "twitter_v1", "twitter_v2", "ira_csv", "table"] = Field(
        default="auto", description="input format; auto detects it from each file's content"
    )
    columns: dict[str, str] | str | None = Field(
        default=None,
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
    strict: bool = Field(
        default=False, description="fail on the first bad record instead of skipping it"
    )
    duplicates: Literal["first", "error", "keep-all"] = Field(
        default="first",
        description="posts repeating an earlier post's id: keep the first (the others are "
        "rejected, counted in stats.json), error, or keep-all (counted only)",
    )
    max_text_chars: int = Field(
        default=10_000, ge=1, description="longer texts are rejected as bad input"
    )
    memory_limit: str = Field(
        default="4GB", description="DuckDB memory limit; it spills to disk beyond"
    )
    threads: int | None = Field(
        default=None, ge=1, description="DuckDB threads (default: all cores)"
    )
    batch_size: int = Field(
        default=50_000, ge=1, description="posts per Parquet row group while reading"
    )
    exclude_posts: str | None = Field(
        default=None,
        description="file with one post id per line: these posts give no edges (e.g. a task's test posts)",
    )
    exclude_edges: str | None = Field(
        default=None,
        description="JSON Lines file of {user: {id, handle}, hashtag}: no edge of any relation "
        "joins these users and hashtags (the hashtag task's strict exclusion)",
    )
    read_workers: int | None = Field(
        default=None,
        ge=1,
        description="processes reading input files in parallel (default: one per core)",
    )
    reader: Literal["fast", "python"] = Field(
        default="fast",
        description="fast: vectorized readers (pyarrow, DuckDB) with the Python reference for the "
        "records they cannot decide; python: the reference readers only (same table, slower)",
    )

    engine: Literal["duckdb", "spark"] = Field(
        default="duckdb",
        description="where the relational steps run: duckdb (one process, out of core) or spark "
        "(PySpark, local or a cluster; pip install 'ntulm[spark]' and a Java 17+ runtime); the "
        "artifact is the same",
    )
    spark_master: str | None = Field(
        default=None,
        description="Spark master URL for engine=spark: local[2], spark://host:7077, yarn, "
        "k8s://...; default: the one spark-submit gives, else local[*]",
    )
    spark_conf: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="extra Spark settings for engine=spark, e.g. "
        "'spark_conf={spark.driver.memory: 8g, spark.sql.shuffle.partitions: 400}'",
    )

    @field_validator("relations")
    @classmethod
    def _relations(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one relation is needed")
        return list(dict.fromkeys(v))

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str] | str | None) -> dict[str, str] | str | None:
        from ntulm.posts.tabular import LayoutError, parse_columns

        try:
            parse_columns(v)
        except LayoutError as exc:
            raise ValueError(str(exc)) from None
        return v

    def reader_options(self) -> dict:
        """The tabular options of a :class:`~ntulm.posts.readers.PostReader`."""
        return {"columns": self.columns, "labels": [t.model_dump() for t in self.labels]}

    @model_validator(mode="after")
    def _range(self) -> GraphConfig:
        if self.max_user_hashtags is not None and self.max_user_hashtags < self.min_user_hashtags:
            raise ValueError(
                f"max_user_hashtags ({self.max_user_hashtags}) < min_user_hashtags ({self.min_user_hashtags})"
            )
        return self

    @classmethod
    def paper(cls) -> GraphConfig:
        """The paper's filters: users with 10-100 unique hashtags, its three relations."""
        return cls(relations=list(PAPER_RELATIONS), min_user_hashtags=10, max_user_hashtags=100)
