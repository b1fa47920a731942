"""One progress line per pipeline stage: ``stage i/n: what`` with the time spent so far and an
estimate of what is left in stages of the same kind (fine-tunes, evaluations), from the ones
already done. Steps within a long stage are the stage's own progress bar (fine-tune, KGE epochs,
encoding), switched off with the bars."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("ntulm.pipeline")


class StageLog:
    def __init__(self, n: int | None = None, *, enabled: bool = True):
        self.n, self.i, self.enabled = n, 0, enabled
        self.t0 = time.perf_counter()
        self.took: dict[str, list[float]] = {}
        self._open: tuple[str, float] | None = None

    def __call__(self, what: str, kind: str | None = None, left: int = 0) -> None:
        """Start stage ``what``; ``left`` more stages of ``kind`` follow this one."""
        self.close()
        self.i += 1
        now = time.perf_counter()
        eta = ""
        done = self.took.get(kind or "", [])
        if done:
            mean = sum(done) / len(done)
            eta = f"; ~{mean * (left + 1):.0f} s for this and {left} more {kind} stage(s)"
        if self.enabled:
            of = f"/{self.n}" if self.n else ""
            log.info("stage %d%s: %s (%.0f s elapsed%s)", self.i, of, what, now - self.t0, eta)
        self._open = (kind, now) if kind else None

    def close(self) -> None:
        if self._open is not None:
            kind, start = self._open
            self.took.setdefault(kind, []).append(time.perf_counter() - start)
            self._open = None
