"""Configuration of the graph stage (paper §3.1, Figure 2)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ntulm.config import StageConfig
from ntulm.posts.config import LabelTableConfig, ReaderConfig, lift_read_keys

__all__ = ["ALL_RELATIONS", "PAPER_RELATIONS", "GraphConfig", "LabelTableConfig", "Relation"]

Relation = Literal["authored", "favorited", "co_mentioned", "retweeted", "replied"]
ALL_RELATIONS: tuple[Relation, ...] = (
    "authored",
    "favorited",
    "co_mentioned",
    "retweeted",
    "replied",
)
PAPER_RELATIONS: tuple[Relation, ...] = ("authored", "favorited", "co_mentioned")


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
    read: ReaderConfig = Field(
        default_factory=ReaderConfig,
        description="how the posts are read (posts/config.py; the flags --format, --strict, "
        "--columns, --labels, ... set it); the old flat keys format, strict, max_text_chars, "
        "duplicates, columns, labels and reader are still accepted",
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

    @model_validator(mode="before")
    @classmethod
    def _old_reader_keys(cls, data: Any) -> Any:
        return lift_read_keys(data)

    @model_validator(mode="after")
    def _range(self) -> GraphConfig:
        if self.max_user_hashtags is not None and self.max_user_hashtags < self.min_user_hashtags:
            raise ValueError(
                f"max_user_hashtags ({self.max_user_hashtags}) < min_user_hashtags ({self.min_user_hashtags})"
            )
        return self

    # Fields that cannot change the graph's content: left out of its fingerprint (the posts read
    # enter it through the posts table's own fingerprint: ReaderConfig.table_key).
    NOT_CONTENT: ClassVar[frozenset[str]] = frozenset(
        {"read", "memory_limit", "threads", "batch_size", "read_workers", "engine"}
        | {"spark_master", "spark_conf"}
    )
    # Content fields added after the first version, at the value that keeps the earlier graph:
    # left out of the fingerprint at that value, so that adding such a field reuses every cached
    # graph (and the NTU embeddings and models after it). A new content field goes here.
    NEUTRAL: ClassVar[dict[str, Any]] = {"exclude_posts": None, "exclude_edges": None}

    def content_key(self) -> dict[str, Any]:
        """The fields that decide the graph made from a given posts table (for fingerprints)."""
        data = self.model_dump(mode="json", exclude=set(self.NOT_CONTENT))
        return {k: v for k, v in data.items() if k not in self.NEUTRAL or v != self.NEUTRAL[k]}

    def legacy_key(self) -> dict[str, Any]:
        """The whole config as it was dumped before the ``read`` section (flat reader keys, every
        field), so that ``ntulm run`` reuses the graphs it fingerprinted that way; it matches no
        old graph unless the fields added since are at their defaults."""
        data = self.model_dump(mode="json")
        read = data.pop("read")
        if read["quarantine"] is not True:
            data["read.quarantine"] = read["quarantine"]  # (matches nothing old)
        for old, new in (("reader", "engine"), *((k, k) for k in _FLAT_READ)):
            data[old] = read[new]
        return data

    @classmethod
    def paper(cls) -> GraphConfig:
        """The paper's filters: users with 10-100 unique hashtags, its three relations."""
        return cls(relations=list(PAPER_RELATIONS), min_user_hashtags=10, max_user_hashtags=100)


_FLAT_READ = ("format", "columns", "labels", "strict", "duplicates", "max_text_chars")
