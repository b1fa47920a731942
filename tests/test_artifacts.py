"""Artifacts are safe under kill -9, reuse and concurrency: the output lock, per-run temp names,
leftovers of dead runs, reader workers that die with their parent, the completion marker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ntulm.artifacts import (
    DONE,
    done_info,
    is_fresh,
    mark_done,
    mark_run,
    output_lock,
    require_done,
)
from ntulm.cli import main
from ntulm.errors import ArtifactError
from ntulm.posts.readers import Quarantine

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOLD = (
    "import sys, time\n"
    "from ntulm.artifacts import output_lock\n"
    "with output_lock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(60)\n"
)


def _python(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, *args], env=env, **kw)


def _posts(tmp_path: Path, name: str, records: list) -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


GOOD = [{"id": 1, "text": "hi #a", "author": "u"}, {"id": 2, "text": "yo #a", "author": "v"}]


# ---------------------------------------------------------------------------- the output lock
def test_second_run_into_a_locked_directory_fails_at_once_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "g"
    holder = _python("-c", HOLD, str(out), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        posts = _posts(tmp_path, "p.jsonl", GOOD)
        t = time.perf_counter()
        code = main(["-q", "build-graph", "--posts", str(posts), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and time.perf_counter() - t < 5
        assert f"in use by another ntulm run (pid {holder.pid})" in err
        assert not (out / DONE).exists()
    finally:
        holder.kill()
        holder.wait()
    # killed holder: the kernel released its lock; the next run owns the directory
    assert main(["-q", "build-graph", "--posts", str(posts), "--out", str(out)]) == 0
    assert (out / DONE).exists() and not (out / ".lock").exists()


def test_lock_is_reentrant_in_one_process_and_exclusive_across(tmp_path):
    with output_lock(tmp_path / "d"), output_lock(tmp_path / "d"):
        probe = _python(
            "-c",
            "import sys\nfrom ntulm.artifacts import output_lock\n"
            "try:\n    output_lock(sys.argv[1]).__enter__()\nexcept Exception as e:\n"
            "    print(e); sys.exit(3)\n",
            str(tmp_path / "d"),
            stdout=subprocess.PIPE,
            text=True,
        )
        out, _ = probe.communicate(timeout=60)
        assert probe.returncode == 3 and f"pid {os.getpid()}" in out


# ---------------------------------------------------------------------------- files of one run
def test_two_quarantines_on_one_path_do_not_share_a_temp_file(tmp_path):
    path = tmp_path / "rejected.jsonl"
    a, b = Quarantine(path), Quarantine(path)
    a.write("f", 1, "bad", "from a")
    b.write("f", 2, "bad", "from b")
    a.close()
    b.close()  # a fixed temp name: renamed away by a.close(), so this one fails
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["raw"] for r in recs] == ["from b"]  # one whole run's records, not a mix
    assert not list(tmp_path.glob(".*.tmp"))


def test_rerun_without_rejections_leaves_no_old_rejected_file(tmp_path):
    out = tmp_path / "g"
    bad = _posts(tmp_path, "bad.jsonl", [*GOOD, "{broken"])
    assert main(["-q", "build-graph", "--posts", str(bad), "--out", str(out)]) == 0
    assert (out / "rejected.jsonl").exists()
    good = _posts(tmp_path, "good.jsonl", GOOD)
    assert main(["-q", "build-graph", "--posts", str(good), "--out", str(out)]) == 0
    assert not (out / "rejected.jsonl").exists()


def test_leftovers_of_a_dead_run_are_removed_by_the_next(tmp_path):
    out = tmp_path / "g"
    (out / ".work-dead" / "posts").mkdir(parents=True)
    (out / ".work-dead" / "posts" / "part-00000.parquet").write_bytes(b"x" * 100)
    (out / ".spill-dead").mkdir()
    (out / ".edges.parquet.abc123.tmp").write_bytes(b"half")
    posts = _posts(tmp_path, "p.jsonl", GOOD)
    assert main(["-q", "build-graph", "--posts", str(posts), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------------------- kill -9
def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"resource_tracker" not in cmd:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has died (nobody reaped it yet)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_kill_9_of_build_graph_takes_its_reader_workers_along(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    line = json.dumps({"id": "1", "text": "hello #a #b @x http://x.co/y words", "author": "u"})
    for i in range(2):  # each file keeps one worker busy for several seconds
        (corpus / f"p{i}.jsonl").write_bytes((line + "\n").encode() * 100_000)
    out = tmp_path / "g"
    cmd = "import sys\nfrom ntulm.cli import main\nsys.exit(main(sys.argv[1:]))"
    args = ["-q", "build-graph", "--posts", str(corpus), "--out", str(out)]
    proc = _python("-c", cmd, *args, "reader=python", "read_workers=2")
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            workers = _children(proc.pid)
        assert len(workers) == 2, "the reader workers never started"
        time.sleep(1.5)  # into their files
        assert all(_alive(w) for w in workers)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 4
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [w for w in workers if _alive(w)]
        assert survivors == [], f"reader workers {survivors} outlived their parent"
    finally:  # never leave processes behind, whatever failed
        proc.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
    assert list(out.glob(".work-*"))  # the dead run's work directory ...
    small = _posts(tmp_path, "small.jsonl", GOOD)
    assert main(["-q", "build-graph", "--posts", str(small), "--out", str(out)]) == 0
    assert not list(out.glob(".work-*"))  # ... is removed by the next run


# ---------------------------------------------------------------------------- the marker
def test_require_done_says_why(tmp_path):
    with pytest.raises(ArtifactError, match="not a directory"):
        require_done(tmp_path / "nope", "graph")
    (tmp_path / "g").mkdir()
    with pytest.raises(ArtifactError, match="did not finish, or is still running"):
        require_done(tmp_path / "g", "graph", "--graph")
    mark_done(tmp_path / "g", "kge", {})
    with pytest.raises(ArtifactError, match="--graph .*is for stage 'kge'"):
        require_done(tmp_path / "g", "graph", "--graph")


def test_run_fingerprint_lives_in_done_and_old_pipeline_markers_are_read(tmp_path):
    d = tmp_path / "kge"
    mark_done(d, "kge", {"a": 1})
    assert is_fresh(d, "kge", "fp1") is None
    mark_run(d, "kge", "fp1", note="x")
    info = json.loads((d / DONE).read_text())
    assert info["run_fingerprint"] == "fp1" and info["stage"] == "kge" and info["note"] == "x"
    assert is_fresh(d, "kge", "fp1") and not is_fresh(d, "kge", "fp2")
    # a directory of an older ntulm: DONE.json from the stage, PIPELINE.json from the pipeline
    old = tmp_path / "old"
    mark_done(old, "lm", {})
    (old / "PIPELINE.json").write_text(json.dumps({"fingerprint": "fp9", "result": {"x": 1}}))
    assert is_fresh(old, "lm", "fp9")["result"] == {"x": 1}
    # ... but an interrupted re-run (no DONE.json) is not reused on its old PIPELINE.json
    (old / DONE).unlink()
    assert is_fresh(old, "lm", "fp9") is None and done_info(old) is None
    # the posts table had PIPELINE.json only (written after the whole table)
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "PIPELINE.json").write_text(json.dumps({"fingerprint": "fpp", "report": {}}))
    assert is_fresh(posts, "posts", "fpp") == {
        "stage": "posts",
        "run_fingerprint": "fpp",
        "report": {},
    }
