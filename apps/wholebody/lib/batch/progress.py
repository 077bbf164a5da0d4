"""One line per finished study: how many are done and failed, studies per minute, and time left."""

from __future__ import annotations

import time
from typing import Callable


class Progress:
    def __init__(self, total: int, skipped: int = 0, clock: Callable[[], float] = time.monotonic):
        self.total, self.skipped = total, skipped
        self.done = self.failed = 0
        self._clock = clock
        self._start = clock()

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def per_minute(self) -> float:
        """Studies finished per minute since the run started (start-up and loading included)."""
        elapsed = self._clock() - self._start
        return 60.0 * self.finished / elapsed if elapsed > 0 else 0.0

    def update(self, study: str, failure: str | None = None) -> str:
        if failure is None:
            self.done += 1
        else:
            self.failed += 1
        rate = self.per_minute()
        left = self.total - self.finished
        eta = f"about {_duration(60.0 * left / rate)} left" if rate > 0 and left else "finished" if not left else "time left unknown"
        state = f"failed: {failure}" if failure else "done"
        return (
            f"[{self.finished}/{self.total}] {study} {state} | done {self.done}, failed {self.failed}"
            f"{f', skipped {self.skipped}' if self.skipped else ''} | {rate:.2f}/min | {eta}"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
