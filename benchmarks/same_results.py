"""Do two runs' ``results.json`` hold the same numbers? Pairs the runs by (variant, task,
fine-tuning seed, MLP seed) and compares every metric, and the overlap / non-overlap slices, for
exact equality: a reproduction check after a change that must not move any number (e.g. an
evaluation run again into a copy of a run directory at a later commit).
Usage: ``python benchmarks/same_results.py A/results.json B/results.json`` (exit 1 if any differ).
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    a, b = (json.load(open(p)) for p in sys.argv[1:3])

    def key(r: dict) -> tuple:
        return r["variant"], r["task"], r.get("finetune_seed"), r["seed"]

    runs_a = {key(r): r for r in a["runs"]}
    runs_b = {key(r): r for r in b["runs"]}
    if set(runs_a) != set(runs_b):
        print(f"different runs: {len(set(runs_a) ^ set(runs_b))} not in both")
        return 1
    same = differ = 0
    for k, r in runs_a.items():
        for m, v in r["metrics"].items():
            if runs_b[k]["metrics"].get(m) == v:
                same += 1
            else:
                differ += 1
                print("differs:", k, m, v, runs_b[k]["metrics"].get(m))
        for part in ("overlap", "non_overlap"):
            if r.get(part) != runs_b[k].get(part):
                differ += 1
                print("differs:", k, part)
    print(f"{len(runs_a)} runs; metric values equal: {same}; differences: {differ}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
