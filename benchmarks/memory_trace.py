"""Which stage of ``ntulm run`` holds the memory: the resident memory of every process of the run's
tree, sampled every 0.5 s, each worker named by the log line that preceded its start.

    python benchmarks/memory_trace.py OUT.json -- ntulm run --config benchmarks/paper_cpu.yaml \\
        --out DIR [key=value ...]

The command must log at INFO (no ``-q``): its stderr is timestamped and tells the stages apart.
``OUT.json`` holds, per process, its peak RSS, when it lived and the last log line before it
appeared (its stage); the tree's peak, which processes were alive at it; and the timeline of the
tree's total (one point per 5 s). ``/usr/bin/time -v`` reports only the largest single process
of a run, so this is how the sum and its parts are measured (``benchmarks/procmem.py`` samples the
same ``/proc`` entries).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import cpu_info  # noqa: E402
from procmem import tree_rss_kb  # noqa: E402


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if cmd and cmd[0] == "ntulm":
        cmd = [sys.executable, "-m", "ntulm", *cmd[1:]]
    t0 = time.time()
    load = uptime()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log: list[tuple[float, str]] = [(0.0, "(start)")]
    procs: dict[int, dict] = {}
    timeline: list[tuple[float, float]] = []
    peak = {"mb": 0.0}
    stop = threading.Event()

    def read_log() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            line = line.rstrip()
            if line and "%|" not in line:  # progress bars are not stages
                log.append((time.time() - t0, line[:200]))
                sys.stderr.write(line + "\n")

    def sample() -> None:
        last = -10.0
        while not stop.is_set():
            t = time.time() - t0
            tree = tree_rss_kb(proc.pid)
            total = sum(tree.values()) / 1024
            for p, kb in tree.items():
                rec = procs.setdefault(
                    p, {"pid": p, "first_s": round(t, 1), "stage": log[-1][1], "peak_mb": 0.0}
                )
                rec["last_s"] = round(t, 1)
                if kb / 1024 > rec["peak_mb"]:
                    rec["peak_mb"] = round(kb / 1024, 1)
                    rec["peak_at_s"] = round(t, 1)
            if total > peak["mb"]:
                peak.update(
                    mb=round(total, 1),
                    at_s=round(t, 1),
                    stage=log[-1][1],
                    alive={str(p): round(kb / 1024, 1) for p, kb in tree.items() if kb},
                )
            if t - last >= 5:
                timeline.append((round(t, 1), round(total, 1)))
                last = t
            time.sleep(0.5)

    threads = [threading.Thread(target=f, daemon=True) for f in (read_log, sample)]
    for th in threads:
        th.start()
    rc = proc.wait()
    stop.set()
    for th in threads:
        th.join(timeout=5)
    wall = time.time() - t0
    big = sorted((r for r in procs.values() if r["peak_mb"] >= 50), key=lambda r: r["first_s"])
    result = {
        "command": " ".join(cmd),
        "returncode": rc,
        "wall_s": round(wall, 1),
        "uptime": load,
        "uptime_after": uptime(),
        "machine": cpu_info(),
        "tree_peak": peak,
        "largest_process_mb": max((r["peak_mb"] for r in procs.values()), default=0.0),
        "processes": big,
        "timeline": timeline,
        "log": [(round(t, 1), s) for t, s in log if " INFO " in s or "ERROR" in s][:400],
    }
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("wall_s", "largest_process_mb", "returncode")}))
    for r in big:
        print(
            f"{r['peak_mb']:8.1f} MB  {r['first_s']:7.1f}-{r['last_s']:7.1f} s  {r['stage'][:110]}"
        )
    print("tree peak", peak["mb"], "MB at", peak.get("at_s"), "s:", peak.get("stage", "")[:110])
    sys.exit(rc)


if __name__ == "__main__":
    main()
