"""The graph's relational steps as SQL that both engines run: DuckDB (``graph/build.py``) and
Spark SQL (``graph/spark.py``). One text, so the two engines cannot drift apart.

The steps read the view ``p`` (the posts table, exclusions applied) and the tables ``excluded_edges``
and, for each step, the tables of the steps before it. ``{unnest}`` is DuckDB's ``unnest`` and
Spark's ``explode``; ``{quantile}`` is ``quantile_cont`` and ``percentile`` (both exact, linearly
interpolated). Ties are broken by value, so every engine and every run picks the same row.
"""

from __future__ import annotations

from ntulm.errors import ConfigError
from ntulm.graph.config import GraphConfig
from ntulm.posts.ntus import node_fields, node_types
from ntulm.posts.schema import POSTS_SCHEMA

DIALECTS = {
    "duckdb": {
        "unnest": "unnest",
        "quantile": "quantile_cont",
        "one": "CASE WHEN {x} IS NULL THEN [] ELSE [{x}] END",
        "concat": "list_concat({a}, {b})",
    },
    "spark": {
        "unnest": "explode",
        "quantile": "percentile",
        "one": "CASE WHEN {x} IS NULL THEN array() ELSE array({x}) END",
        "concat": "concat({a}, {b})",
    },
}
# The graph's node types: every relation joins a user to a hashtag (graph/config.py).
LHS, RHS = "user", "hashtag"
# Users a post names besides its NTUs of node type user: its engagements (who retweeted, liked,
# replied, whom it retweets or replies to). They give users identities (handle <-> id), not NTUs.
ENGAGEMENT_USERS = (
    "retweet_of_author",
    "reply_to_user",
    "favorited_by",
    "retweeted_by",
    "replied_by",
)


def _is_list(field: str) -> bool:
    return str(POSTS_SCHEMA.field(field).type).startswith("list")


def ntu_list(node_type: str, dialect: str = "duckdb", row: str = "") -> str:
    """SQL of a post's list of NTUs of ``node_type`` (the registry's fields of that node type,
    concatenated in registry order; a single-valued field as a list of one, or none if NULL).
    ``row``: a table alias prefix such as ``"c."``."""
    d = DIALECTS[dialect]
    parts = [
        f"{row}{f}" if _is_list(f) else d["one"].format(x=f"{row}{f}")
        for f in node_fields(node_type)
    ]
    if not parts:
        raise ConfigError(f"no NTU type has node type {node_type!r} (posts/ntus.py)")
    expr = parts[-1]
    for part in reversed(parts[:-1]):
        expr = d["concat"].format(a=part, b=expr)
    return expr


def check_node_types() -> None:
    """A registry node type the graph has no relation for is an error, not a silent gap."""
    extra = [t for t in node_types() if t not in (LHS, RHS)]
    if extra:
        raise ConfigError(
            f"NTU node type(s) {extra} (posts/ntus.py): the graph joins {LHS} to {RHS} nodes "
            "only; give the type one of these node types or none"
        )


# (relation, SQL yielding post_id, u (user struct), h (hashtag)) over the posts view `p`;
# {tags}: the post's hashtag-node NTUs (`hashtags`, from the registry: ntu_list).
ENGAGEMENT_SQL = {
    "authored": [
        "SELECT id AS post_id, author AS u, {unnest}({tags}) AS h FROM p WHERE NOT is_retweet AND author IS NOT NULL",
        "SELECT coalesce(retweet_of_id, id || ':original') AS post_id, retweet_of_author AS u, {unnest}({tags}) AS h "
        "FROM p WHERE is_retweet AND retweet_of_author IS NOT NULL",
    ],
    "favorited": [
        "SELECT post_id, u, {unnest}(tags) AS h FROM (SELECT id AS post_id, {unnest}(favorited_by) AS u, {tags} AS tags FROM p)"
    ],
    "co_mentioned": [
        "SELECT post_id, u, {unnest}(tags) AS h FROM (SELECT id AS post_id, {unnest}(mentions) AS u, {tags} AS tags FROM p)"
    ],
    "retweeted": [
        "SELECT post_id, u, {unnest}(tags) AS h FROM (SELECT id AS post_id, {unnest}(retweeted_by) AS u, {tags} AS tags FROM p)",
        "SELECT id AS post_id, author AS u, {unnest}({tags}) AS h FROM p WHERE is_retweet AND author IS NOT NULL",
    ],
    "replied": [
        "SELECT post_id, u, {unnest}(tags) AS h FROM (SELECT id AS post_id, {unnest}(replied_by) AS u, {tags} AS tags FROM p)",
        # a post id seen twice (e.g. two crawls) counts as the parent with its smallest hashtag list
        "SELECT c.id AS post_id, c.author AS u, {unnest}(par.tags) AS h FROM p c "
        "JOIN (SELECT id, min({tags}) AS tags FROM p GROUP BY id) par ON par.id = c.reply_to_id "
        "WHERE c.author IS NOT NULL",
    ],
}


def user_refs(dialect: str) -> list[str]:
    """One SELECT per post field naming users (``u``): the registry's user NTUs (author,
    mentions) and the engagement fields."""
    unnest = DIALECTS[dialect]["unnest"]
    return [
        f"SELECT {unnest}({f}) AS u FROM p" if _is_list(f) else f"SELECT {f} AS u FROM p"
        for f in (*node_fields(LHS), *ENGAGEMENT_USERS)
    ]


def _user_key(ref: str, alias: str) -> str:
    """One identity per user: its id, else the id its handle resolves to, else its handle."""
    return (
        f"CASE WHEN {ref}.id IS NOT NULL THEN 'id:' || {ref}.id "
        f"WHEN {alias}.id IS NOT NULL THEN 'id:' || {alias}.id ELSE '@' || {ref}.handle END"
    )


def _most_frequent(key: str, value: str, refs: str) -> str:
    # the most frequent pairing wins; a tie goes to the smallest value
    return f"""SELECT {key}, {value} FROM (
        SELECT u.{key} AS {key}, u.{value} AS {value},
               row_number() OVER (PARTITION BY u.{key} ORDER BY count(*) DESC, u.{value}) AS rk
        FROM ({refs}) WHERE u.id IS NOT NULL AND u.handle IS NOT NULL GROUP BY u.{key}, u.{value}
    ) WHERE rk = 1"""


def graph_steps(config: GraphConfig, dialect: str) -> list[tuple[str, str]]:
    """``(table name, SELECT)`` in order, up to ``kept`` (the filtered engagement rows)."""
    check_node_types()
    d = DIALECTS[dialect]
    refs = " UNION ALL ".join(user_refs(dialect))
    tags = ntu_list(RHS, dialect)
    parts = " UNION ALL ".join(
        f"SELECT post_id, u, '{rel}' AS rel, h FROM ({sql.format(unnest=d['unnest'], tags=tags)})"
        for rel in config.relations
        for sql in ENGAGEMENT_SQL[rel]
    )
    max_tags = config.max_user_hashtags if config.max_user_hashtags is not None else 2**62
    return [
        # handle -> id and id -> handle, where some record gives both
        ("alias", _most_frequent("handle", "id", refs)),
        ("id_handle", _most_frequent("id", "handle", refs)),
        # the NTU rows: one per (post, user, relation, hashtag)
        (
            "engagement_all",
            f"""SELECT DISTINCT e.post_id, {_user_key("e.u", "a")} AS user_key, e.rel, e.h AS hashtag
            FROM ({parts}) e LEFT JOIN alias a ON a.handle = e.u.handle
            WHERE e.h IS NOT NULL AND e.h <> '' AND (e.u.id IS NOT NULL OR e.u.handle IS NOT NULL)""",
        ),
        # strict exclusion: these (user, hashtag) pairs give no edge, whatever the relation or post
        (
            "engagement",
            f"""SELECT * FROM engagement_all g WHERE NOT EXISTS (
                SELECT 1 FROM (SELECT {_user_key("xe", "a")} AS user_key, xe.hashtag
                               FROM excluded_edges xe LEFT JOIN alias a ON a.handle = xe.handle) x
                WHERE x.user_key = g.user_key AND x.hashtag = g.hashtag)""",
        ),
        # the paper's filters, once, in this order: hashtags by posts, then users by hashtags
        (
            "kept",
            f"""WITH tags AS (SELECT hashtag FROM engagement GROUP BY hashtag
                              HAVING count(DISTINCT post_id) >= {config.min_hashtag_posts}),
                 e AS (SELECT * FROM engagement WHERE hashtag IN (SELECT hashtag FROM tags)),
                 users AS (SELECT user_key FROM e GROUP BY user_key
                           HAVING count(DISTINCT hashtag) BETWEEN {config.min_user_hashtags} AND {max_tags})
            SELECT * FROM e WHERE user_key IN (SELECT user_key FROM users)""",
        ),
    ]


# The vocabularies before numbering: `key` is unique; node ids are the keys' sorted positions.
USER_VOCAB_SQL = """SELECT k.user_key AS key,
       CASE WHEN k.user_key LIKE 'id:%' THEN substring(k.user_key, 4) END AS user_id,
       CASE WHEN k.user_key LIKE '@%' THEN substring(k.user_key, 2) ELSE ih.handle END AS handle,
       k.n AS posts
FROM (SELECT user_key, count(DISTINCT post_id) AS n FROM kept GROUP BY user_key) k
LEFT JOIN id_handle ih ON 'id:' || ih.id = k.user_key"""

HASHTAG_VOCAB_SQL = (
    "SELECT hashtag AS key, count(DISTINCT post_id) AS posts FROM kept GROUP BY hashtag"
)


# The artifact files and their row order.
OUTPUTS = {
    "edges.parquet": "SELECT * FROM edges ORDER BY rel, lhs, rhs",
    "nodes_user.parquet": "SELECT * FROM user_nodes ORDER BY node_id",
    "nodes_hashtag.parquet": "SELECT * FROM hashtag_nodes ORDER BY node_id",
}


def edges_sql(config: GraphConfig) -> str:
    weight = "count(*)" if config.weighting == "count" else "1"
    return f"""SELECT un.node_id AS lhs, k.rel AS rel, hn.node_id AS rhs, CAST({weight} AS FLOAT) AS weight
        FROM kept k JOIN user_nodes un ON un.key = k.user_key JOIN hashtag_nodes hn ON hn.key = k.hashtag
        GROUP BY un.node_id, k.rel, hn.node_id"""


def _summary_sql(query: str, dialect: str) -> str:
    q = DIALECTS[dialect]["quantile"]
    return f"""SELECT min(d), {q}(d, 0.5), avg(d), {q}(d, 0.9), {q}(d, 0.99), max(d)
        FROM ({query})"""


def stats_sql(dialect: str) -> dict[str, str]:
    """The statistics of ``stats.json`` (one row each) over the tables above and ``edges``."""
    return {
        "per_rel": "SELECT rel, count(*), sum(weight) FROM edges GROUP BY rel ORDER BY rel",
        "counts": """SELECT (SELECT count(*) FROM user_nodes), (SELECT count(*) FROM hashtag_nodes),
            (SELECT count(*) FROM user_nodes WHERE user_id IS NULL),
            (SELECT count(DISTINCT post_id) FROM kept)""",
        "before": "SELECT count(DISTINCT user_key), count(DISTINCT hashtag), count(*) FROM engagement",
        "removed": "SELECT (SELECT count(*) FROM engagement_all) - (SELECT count(*) FROM engagement)",
        "user_degree": _summary_sql(
            "SELECT count(DISTINCT rhs) AS d FROM edges GROUP BY lhs", dialect
        ),
        "hashtag_degree": _summary_sql(
            "SELECT count(DISTINCT lhs) AS d FROM edges GROUP BY rhs", dialect
        ),
    }


def stats_from_rows(rows: dict[str, list[tuple]]) -> dict:
    """``stats.json``'s graph part from the rows of :func:`stats_sql`'s queries."""
    per_rel = rows["per_rel"]
    n_users, n_tags, unresolved, posts_with_edges = rows["counts"][0]
    before = rows["before"][0]

    def summary(row: tuple) -> dict[str, float]:
        keys = ("min", "median", "mean", "p90", "p99", "max")
        return {
            k: (round(float(v), 2) if v is not None else 0.0)
            for k, v in zip(keys, row, strict=True)
        }

    return {
        "nodes": {"user": int(n_users), "hashtag": int(n_tags)},
        "users_by_handle_only": int(unresolved),
        "edges": sum(int(r[1]) for r in per_rel),
        "edges_per_relation": {r[0]: int(r[1]) for r in per_rel},
        "weight_per_relation": {r[0]: float(r[2]) for r in per_rel},
        "posts_with_edges": int(posts_with_edges),
        "before_filters": {
            "users": int(before[0]),
            "hashtags": int(before[1]),
            "engagements": int(before[2]),
        },
        "degree": {
            "user_unique_hashtags": summary(rows["user_degree"][0]),
            "hashtag_unique_users": summary(rows["hashtag_degree"][0]),
        },
        "engagements_excluded_by_edge": int(rows["removed"][0][0]),
    }
