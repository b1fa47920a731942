"""improvement.png: an empty slice (no non-overlap test posts) is marked n/a, not drawn as a
zero bar that reads as "no change"."""

from __future__ import annotations

import math

from ntulm.pipeline import report


def test_empty_slice_is_marked_na_not_a_zero_bar(tmp_path, monkeypatch):
    results = {
        "config": {"baseline": "BERT", "variants": [{"name": "BERT"}, {"name": "NTULM"}]},
        "tasks": {"community": {}, "stance": {}},
        "lm": {},
    }
    changes = {  # stance has no non-overlap posts: every stance post has a known NTU
        ("NTULM", "community", "metrics"): [4.0, 6.0],
        ("NTULM", "community", "overlap"): [5.0, 7.0],
        ("NTULM", "community", "non_overlap"): [-1.0, 1.0],
        ("NTULM", "stance", "metrics"): [0.0, 0.0],
        ("NTULM", "stance", "overlap"): [0.0, 0.0],
    }
    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figs.append((fig, path.name)))
    assert report.figures(results, {"changes": changes}, tmp_path) == ["improvement.png"]
    from matplotlib.container import BarContainer

    (ax,) = figs[0][0].axes
    assert figs[0][1] == "improvement.png"
    heights = {
        (c.get_label(), round(p.get_x() + p.get_width() / 2, 2)): p.get_height()
        for c in ax.containers
        if isinstance(c, BarContainer)
        for p in c.patches
    }
    assert heights[("overall", -0.27)] == 5.0 and heights[("non-overlap", 0.27)] == 0.0
    assert heights[("overall", 0.73)] == 0.0  # a real zero change is still a (flat) bar
    assert math.isnan(heights[("non-overlap", 1.27)])  # the empty slice: no bar ...
    (na,) = [t for t in ax.texts if t.get_text() == "n/a"]  # ... and an n/a mark at its slot
    assert round(na.get_position()[0], 2) == 1.27
