"""Where the task builders read posts from: a list of :class:`Post`, or the Parquet posts table.

The builders (:mod:`ntulm.evaluate.tasks`, :mod:`ntulm.evaluate.hashtag`) decide on columns, by
corpus position (labels, author keys, hashtag counts), and turn into :class:`Post` objects only
the posts a task keeps. Over a :class:`~ntulm.posts.rows.PostsTable` the columns come from DuckDB,
so a corpus of millions of posts is never held as objects; over a list they come from the posts.
Both give the same positions, so a task is the same whichever source it was built from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from ntulm.evaluate.splits import author_key
from ntulm.posts import Post
from ntulm.posts.rows import AUTHOR_KEY_SQL, PostsTable

PostSource = Iterable[Post] | PostsTable


def as_source(posts: PostSource) -> list[Post] | PostsTable:
    return posts if isinstance(posts, PostsTable) else list(posts)


def labels_of(src: list[Post] | PostsTable, label: str) -> list[str | None]:
    """``post.labels[label]`` by position (None where absent)."""
    if isinstance(src, PostsTable):
        return src.column(f"labels['{label.replace(chr(39), chr(39) * 2)}']")
    return [p.labels.get(label) for p in src]


def authors_of(src: list[Post] | PostsTable) -> list[str | None]:
    """:func:`~ntulm.evaluate.splits.author_key` by position."""
    if isinstance(src, PostsTable):
        return src.column(AUTHOR_KEY_SQL)
    return [author_key(p) for p in src]


def hashtag_counts(src: list[Post] | PostsTable) -> Counter[str]:
    """Posts per hashtag (a post counts once per hashtag it lists)."""
    if isinstance(src, PostsTable):
        rows = src.con.execute(
            "SELECT h, count(*) FROM (SELECT unnest(hashtags) AS h FROM posts) GROUP BY h"
        ).fetchall()
        return Counter(dict(rows))
    return Counter(h for p in src for h in p.hashtags)


def tagged(src: list[Post] | PostsTable, tags: Sequence[str]) -> Iterator[tuple[int, str, list]]:
    """``(position, text, hashtags)`` of the posts carrying any of ``tags``, in corpus order."""
    if isinstance(src, PostsTable):
        src.con.execute(
            "CREATE OR REPLACE TEMP TABLE _tags AS SELECT unnest($1) AS h", [list(tags)]
        )
        query = (
            "SELECT rid, text, hashtags FROM posts WHERE len(list_intersect(hashtags, "
            "(SELECT list(h) FROM _tags))) > 0 ORDER BY rid"
        )
        for batch in src.batches(query):
            yield from zip(
                batch.column("rid").to_pylist(),
                batch.column("text").to_pylist(),
                batch.column("hashtags").to_pylist(),
                strict=True,
            )
        return
    wanted = set(tags)
    for i, p in enumerate(src):
        if wanted.intersection(p.hashtags):
            yield i, p.text, p.hashtags


def take(src: list[Post] | PostsTable, positions: Sequence[int]) -> list[Post]:
    """The posts at ``positions``, in that order."""
    if isinstance(src, PostsTable):
        return src.take(positions)
    return [src[int(i)] for i in positions]
