"""Atomic artifact writes and artifact-directory bookkeeping.

Every file a stage produces is written to a temporary sibling and moved into place with
``os.replace``, so a crash never leaves a half-written artifact that a later stage would trust.
A directory is *complete* once its ``DONE.json`` marker exists; it records the stage, the resolved
config and its fingerprint so a pipeline can reuse an artifact made with the same config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ntulm.errors import ArtifactError

DONE = "DONE.json"
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
    write_json(
        Path(out_dir) / DONE,
        {"stage": stage, "config_fingerprint": fingerprint(config), **extra},
    )


def is_done(out_dir: str | Path, stage: str, config: dict[str, Any] | None = None) -> bool:
    marker = Path(out_dir) / DONE
    if not marker.exists():
        return False
    try:
        info = read_json(marker)
    except ArtifactError:
        return False
    if info.get("stage") != stage:
        return False
    return config is None or info.get("config_fingerprint") == fingerprint(config)


def require_done(out_dir: str | Path, stage: str) -> Path:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ArtifactError(f"{out_dir}: not a directory (expected a {stage} artifact)")
    if not is_done(out_dir, stage):
        raise ArtifactError(f"{out_dir}: not a finished {stage} artifact (no {DONE} for {stage})")
    return out_dir
