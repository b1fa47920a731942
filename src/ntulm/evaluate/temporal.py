"""The temporal protocol: everything the method trains on is from before a cutoff, the tasks'
validation and test posts are from at or after it.

A post's time is its ``created_at`` string, read in SQL (:data:`POST_TIME_SQL`, so a posts table
and a list of posts give the same answer): ISO 8601 with an offset (``Z``, ``+02:00``) is turned
into UTC; without one (IRA ``publish_date``) it is taken as UTC; anything else is *no time*.
Each corpus position gets a period (:func:`periods`): :data:`BEFORE` (strictly before the
cutoff), :data:`AFTER` (at or after it) or :data:`NO_TIME`.

The cutoff is a date (``cutoff``) or a quantile of the post times (``cutoff_quantile``), resolved
once (:func:`resolve_cutoff`): DuckDB ``quantile_disc`` over the times of the posts that have one,
so about that share of them falls before it (posts at the cutoff time count as after).

Task splits (:func:`temporal_split_keys`): the post-cutoff posts of a task are split exactly as
the paper protocol splits a corpus (same unit, fractions, stratification and seed); their
validation and test parts are the task's validation and test posts; their training part is
trained on only with ``train_from="any"`` (under ``"before"`` it is dropped, counted). Every
pre-cutoff post is a training post, except, split by author, those of an author whose
post-cutoff posts are in validation or test (that author is unseen by the classifier; their
pre-cutoff posts still shape the graph, as they would for a user whose history predates the
model). Authors who first post after the cutoff are new authors: they have no NTU vector.
Posts without a time are in no split (counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa

from ntulm.evaluate.splits import SplitBy, split_keys
from ntulm.posts import Post
from ntulm.posts.rows import PostsTable

BEFORE, AFTER, NO_TIME = 0, 1, -1
TrainFrom = Literal["before", "any"]

# created_at -> TIMESTAMP in UTC (NULL where unparseable); independent of the session time zone.
POST_TIME_SQL = (
    "(CASE WHEN regexp_matches(created_at, '(Z|[+-][0-9][0-9]:?[0-9][0-9])$') "
    "THEN timezone('UTC', try_cast(created_at AS TIMESTAMPTZ)) "
    "ELSE try_cast(created_at AS TIMESTAMP) END)"
)


def before_sql(at: str) -> str:
    """SQL predicate over a posts row: its time is known and strictly before ``at``."""
    return f"({POST_TIME_SQL} < TIMESTAMP '{_check_ts(at)}')"


@dataclass
class Temporal:
    """A resolved temporal protocol over one corpus: the cutoff and each position's period."""

    at: str  # the cutoff, 'YYYY-MM-DD HH:MM:SS' UTC
    given: str  # as configured: the date or 'quantile 0.8'
    train_from: TrainFrom
    period: np.ndarray  # (N,) int8: BEFORE / AFTER / NO_TIME per corpus position

    def counts(self) -> dict[str, int]:
        return {
            "posts_before": int((self.period == BEFORE).sum()),
            "posts_after": int((self.period == AFTER).sum()),
            "posts_without_time": int((self.period == NO_TIME).sum()),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": "temporal",
            "cutoff_given": self.given,
            "cutoff": self.at,
            "train_from": self.train_from,
            **self.counts(),
        }


def _check_ts(at: str) -> str:
    datetime.fromisoformat(at)  # a ValueError, never SQL, for anything else
    return at


def _con(src: PostsTable | Sequence[Post]) -> duckdb.DuckDBPyConnection:
    """A connection with a view ``_times(rid, created_at)`` over the source, in corpus order."""
    if isinstance(src, PostsTable):
        src.con.execute("CREATE OR REPLACE TEMP VIEW _times AS SELECT rid, created_at FROM posts")
        return src.con
    con = duckdb.connect()
    times = pa.table(
        {
            "rid": pa.array(range(len(src)), pa.int64()),
            "created_at": pa.array([p.created_at for p in src], pa.string()),
        }
    )
    con.register("_times", times)
    return con


def resolve_cutoff(
    src: PostsTable | Sequence[Post],
    cutoff: date | datetime | str | None = None,
    quantile: float | None = None,
) -> str:
    """The cutoff as 'YYYY-MM-DD HH:MM:SS' (UTC): ``cutoff`` itself, or ``quantile_disc`` of the
    post times at ``quantile``."""
    if (cutoff is None) == (quantile is None):
        raise ValueError("temporal protocol: give exactly one of cutoff and cutoff_quantile")
    if cutoff is not None:
        if isinstance(cutoff, str):
            cutoff = datetime.fromisoformat(cutoff)
        if not isinstance(cutoff, datetime):
            cutoff = datetime(cutoff.year, cutoff.month, cutoff.day)
        if cutoff.tzinfo is not None:
            cutoff = cutoff.astimezone(timezone.utc).replace(tzinfo=None)
        return cutoff.strftime("%Y-%m-%d %H:%M:%S")
    if not 0.0 < float(quantile) < 1.0:  # type: ignore[arg-type]
        raise ValueError(f"cutoff_quantile must be in (0, 1), got {quantile}")
    con = _con(src)
    row = con.execute(
        f"SELECT strftime(quantile_disc(ts, {float(quantile)}), '%Y-%m-%d %H:%M:%S') "
        f"FROM (SELECT {POST_TIME_SQL} AS ts FROM _times) WHERE ts IS NOT NULL"
    ).fetchone()
    if row is None or row[0] is None:
        raise ValueError("temporal protocol: no post has a readable created_at time")
    return row[0]


def periods(src: PostsTable | Sequence[Post], at: str) -> np.ndarray:
    """(N,) int8 by corpus position: BEFORE, AFTER (at or after ``at``) or NO_TIME."""
    con = _con(src)
    col = con.execute(
        f"SELECT CASE WHEN ts IS NULL THEN {NO_TIME} WHEN ts < TIMESTAMP '{_check_ts(at)}' "
        f"THEN {BEFORE} ELSE {AFTER} END AS k FROM (SELECT rid, {POST_TIME_SQL} AS ts FROM _times) "
        "ORDER BY rid"
    ).fetchnumpy()["k"]
    return np.asarray(col, dtype=np.int8)


def temporal(
    src: PostsTable | Sequence[Post],
    cutoff: date | datetime | str | None = None,
    quantile: float | None = None,
    train_from: TrainFrom = "before",
) -> Temporal:
    """Resolve the cutoff over ``src`` and give every position its period."""
    if train_from not in ("before", "any"):
        raise ValueError(f"train_from: {train_from!r} is not 'before' or 'any'")
    at = resolve_cutoff(src, cutoff, quantile)
    given = str(cutoff) if cutoff is not None else f"quantile {quantile}"
    return Temporal(at=at, given=given, train_from=train_from, period=periods(src, at))


def temporal_split_keys(
    period: np.ndarray,
    authors: Sequence[str | None] | None,
    strata: Sequence[str],
    split_by: SplitBy,
    val_frac: float,
    test_frac: float,
    seed: int,
    train_from: TrainFrom,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Train / val / test indices under the cutoff (see the module docstring) and the counts of
    what was left out. ``period[i]``, ``authors[i]`` (by author only), ``strata[i]``: post i."""
    period = np.asarray(period)
    after = np.flatnonzero(period == AFTER)
    before = np.flatnonzero(period == BEFORE)
    a_authors = [authors[i] for i in after] if authors is not None else None
    tr, va, te, dropped = split_keys(
        a_authors, [strata[i] for i in after], split_by, val_frac, test_frac, seed
    )
    val, test = after[va], after[te]
    if not len(test):
        raise ValueError("temporal protocol: no test posts at or after the cutoff")
    info = {
        "posts_before_cutoff": len(before),
        "posts_after_cutoff": len(after),
        "posts_without_time": int((period == NO_TIME).sum()),
        "posts_dropped_in_split": dropped,
        "after_cutoff_train_posts_dropped": len(tr) if train_from == "before" else 0,
    }
    if split_by == "author":
        assert authors is not None
        held = {authors[i] for i in (*val, *test)}
        keep = np.array([authors[i] is not None and authors[i] not in held for i in before])
        info["before_cutoff_posts_of_val_test_authors_dropped"] = int(
            sum(authors[i] in held for i in before)
        )
        info["before_cutoff_posts_without_author_dropped"] = int(
            sum(authors[i] is None for i in before)
        )
        before = before[keep] if len(before) else before
    train = np.sort(np.concatenate([before, after[tr] if train_from == "any" else after[:0]]))
    return train.astype(np.int64), val, test, info
