"""Stage 1b: posts -> heterogeneous user-hashtag NTU graph (paper §3.1), built in DuckDB."""

from ntulm.graph.build import build_graph, build_graph_from_table
from ntulm.graph.config import ALL_RELATIONS, PAPER_RELATIONS, GraphConfig
from ntulm.graph.coverage import format_table5, ntu_coverage

__all__ = [
    "ALL_RELATIONS",
    "PAPER_RELATIONS",
    "GraphConfig",
    "build_graph",
    "build_graph_from_table",
    "format_table5",
    "ntu_coverage",
]
