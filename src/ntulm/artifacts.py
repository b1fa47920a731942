"""Atomic artifact writes and artifact-directory bookkeeping.

- Every file a stage produces is written to a temporary sibling with a name unique to the run
  (``.<name>.<random>.tmp``) and moved into place with ``os.replace``, so a crash never leaves a
  half-written artifact that a later stage would trust, and two writers never share a temp file.
- A directory is *complete* once its ``DONE.json`` marker exists: the one completion mechanism of
  the project. It records the stage, the fingerprint of the resolved config, and, when
  ``ntulm run`` made it, the fingerprint of everything upstream (``run_fingerprint``) so a
  pipeline can reuse it. A stage removes the marker before it writes anything and writes it last;
  every stage refuses an input directory without it (:func:`require_done`). Directories written
  before the marker held ``run_fingerprint`` kept it in ``PIPELINE.json``; it is still read.
- :func:`output_lock` makes a run own its output directory: a second run into it fails at once,
  naming the holder's pid; the lock dies with its process (``flock``), even under ``kill -9``,
  and the next owner removes what a dead run left (``.work-*``/``.spill-*`` directories,
  ``.*.tmp`` files).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ntulm.errors import ArtifactError

log = logging.getLogger(__name__)

DONE = "DONE.json"
LEGACY_MARK = "PIPELINE.json"  # ntulm run's marker before it moved into DONE.json (read only)
LOCK = ".lock"
# What a dead run leaves in its output directory: removed by the next run that owns it.
STALE = (".work-*", ".spill-*", ".*.tmp")
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class AtomicFile:
    """A text file written over time (e.g. a quarantine) and moved into place on :meth:`commit`;
    :meth:`discard` (or a crash) leaves ``path`` as it was. The temp name is unique per writer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        os.fchmod(fd, 0o666 & ~_UMASK)
        self.tmp = Path(tmp)
        self.fh: IO[str] = os.fdopen(fd, "w", encoding="utf-8")

    def commit(self) -> None:
        self.fh.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able object (used to decide whether to reuse an artifact)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def mark_done(out_dir: str | Path, stage: str, config: dict[str, Any], **extra: Any) -> None:
    """Declare ``out_dir`` a finished ``stage`` artifact (write this last)."""
    write_json(
        Path(out_dir) / DONE,
        {"stage": stage, "config_fingerprint": fingerprint(config), **extra},
    )


def unmark(out_dir: str | Path) -> None:
    """Declare ``out_dir`` unfinished (call before a stage writes anything into it)."""
    out = Path(out_dir)
    (out / DONE).unlink(missing_ok=True)
    (out / LEGACY_MARK).unlink(missing_ok=True)


def done_info(out_dir: str | Path, stage: str | None = None) -> dict[str, Any] | None:
    """The ``DONE.json`` record of a finished artifact (of ``stage``, if given), else ``None``.
    A ``run_fingerprint`` that an older ntulm kept in ``PIPELINE.json`` is merged in."""
    out = Path(out_dir)
    try:
        info = read_json(out / DONE)
    except ArtifactError:
        info = None
    if info is not None and stage is not None and info.get("stage") != stage:
        return None
    if (out / LEGACY_MARK).exists() and (info is None or "run_fingerprint" not in info):
        try:
            legacy = read_json(out / LEGACY_MARK)
        except ArtifactError:
            return info
        if info is None and not _legacy_complete(out, stage):
            return None
        info = {"stage": stage, **(info or {}), **_from_legacy(legacy)}
    return info


def _legacy_complete(out: Path, stage: str | None) -> bool:
    # Before DONE.json carried the run fingerprint, ``ntulm run`` marked the posts table (which
    # no stage command makes) with PIPELINE.json alone, written after the whole table.
    return stage == "posts"


def _from_legacy(legacy: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in legacy.items() if k != "fingerprint"}
    if "fingerprint" in legacy:
        out["run_fingerprint"] = legacy["fingerprint"]
    return out


def is_done(out_dir: str | Path, stage: str, config: dict[str, Any] | None = None) -> bool:
    info = done_info(out_dir, stage)
    if info is None:
        return False
    return config is None or info.get("config_fingerprint") == fingerprint(config)


def is_fresh(out_dir: str | Path, stage: str, run_fingerprint: str) -> dict[str, Any] | None:
    """The marker of a finished ``stage`` artifact that ``ntulm run`` made from exactly the inputs
    behind ``run_fingerprint`` (so it can be reused), else ``None``."""
    info = done_info(out_dir, stage)
    if info is None or info.get("run_fingerprint") != run_fingerprint:
        return None
    return info


def mark_run(out_dir: str | Path, stage: str, run_fingerprint: str, **info: Any) -> None:
    """Record in the marker of the finished ``stage`` artifact ``out_dir`` the fingerprint of the
    pipeline inputs it was made from (and ``info``); a directory with no marker (e.g. the posts
    table, which no stage command makes) gets one."""
    out = Path(out_dir)
    current = done_info(out, stage)
    if current is None:
        if (out / DONE).exists():
            raise ArtifactError(f"{out}: {DONE} is not for stage {stage}")
        current = {"stage": stage}
    current = {k: v for k, v in current.items() if k != "run_fingerprint"}
    write_json(out / DONE, {**current, **info, "run_fingerprint": run_fingerprint})
    (out / LEGACY_MARK).unlink(missing_ok=True)


def require_done(out_dir: str | Path, stage: str, what: str | None = None) -> Path:
    """``out_dir`` if it is a finished ``stage`` artifact, else an :class:`ArtifactError` that
    says what is wrong (``what``: how the user named it, e.g. ``--model``)."""
    out_dir = Path(out_dir)
    name = f"{what} {out_dir}" if what else str(out_dir)
    if not out_dir.is_dir():
        raise ArtifactError(f"{name}: not a directory (expected a {stage} artifact)")
    if not is_done(out_dir, stage):
        marker = done_info(out_dir)
        why = (
            f"its {DONE} is for stage {marker.get('stage')!r}"
            if marker is not None
            else f"no {DONE}: the run that wrote it did not finish, or is still running"
        )
        raise ArtifactError(f"{name}: not a finished {stage} artifact ({why})")
    return out_dir


# ---------------------------------------------------------------------------- output lock
_HELD: dict[str, list] = {}  # realpath -> [fd, depth]: this process's locks (re-entrant)


@contextlib.contextmanager
def output_lock(out_dir: str | Path) -> Iterator[Path]:
    """Own ``out_dir`` for the duration: an exclusive ``flock`` on ``<out_dir>/.lock``, held by
    this process (released on exit, or by the kernel when it dies, ``kill -9`` included). A
    second run into the same directory fails at once with an :class:`ArtifactError` naming the
    holder's pid. On entry, what a dead run left behind (:data:`STALE`) is removed. Re-entrant
    within a process (a stage called by the pipeline on a directory it already holds)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(out)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield out
        finally:
            _HELD[key][1] -= 1
        return
    fd = _acquire(out / LOCK)
    _HELD[key] = [fd, 1]
    try:
        remove_stale(out)
        yield out
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(out / LOCK)  # before the release: a waiter that opened it retries
        os.close(fd)


def _acquire(path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ArtifactError(
                f"{path.parent}: in use by another ntulm run (pid {holder}); wait for it to "
                "finish or write to another output directory"
            ) from None
        try:  # the file we locked must still be the one at `path` (its holder may have unlinked it)
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


def remove_stale(out_dir: str | Path) -> list[Path]:
    """Remove what a dead run left at the top of ``out_dir`` (:data:`STALE`); call only while
    holding :func:`output_lock` on it. Returns what was removed."""
    removed = []
    for pattern in STALE:
        for p in Path(out_dir).glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("%s: removed %d leftover(s) of an interrupted run", out_dir, len(removed))
    return removed
