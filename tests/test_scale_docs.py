"""docs/scale.md's measured tables and cost model are rendered from the benchmarks' JSON
(benchmarks/scale_tables.py), not typed in: the page must match what the JSON gives."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_doc_tables_match_the_benchmark_json():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import scale_tables
    finally:
        sys.path.pop(0)
    doc = (ROOT / "docs" / "scale.md").read_text()
    for name, text in scale_tables.blocks().items():
        m = scale_tables.pattern(name).search(doc)
        assert m is not None, f"docs/scale.md: no block {name}"
        assert m[2] == text, (
            f"docs/scale.md block {name!r} is not what benchmarks/results/scale.json gives: "
            "run python benchmarks/scale_tables.py --write"
        )
