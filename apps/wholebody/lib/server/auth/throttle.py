"""Failed sign-ins, counted per username and per client address within a window.

Each failure is answered later than the one before (``delay`` doubling up to 8 s); past the
limit (either count), sign-ins are refused with 429 until the oldest failure leaves the window,
without the password being checked. An attempt counts as failed from the moment it starts, so
parallel guesses cannot slip in before the first ones are answered. Memory is bounded: the
least recently seen keys are forgotten beyond ``max_keys``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from typing import Callable

MAX_DELAY_SECONDS = 8.0


class _Failures:
    def __init__(self, limit: int, window: float, max_keys: int):
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self._times: OrderedDict[str, deque] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque:
        times = self._times.pop(key, None) or deque(maxlen=self.limit)
        while times and now - times[0] >= self.window:
            times.popleft()
        self._times[key] = times  # most recently seen last
        while len(self._times) > self.max_keys:
            self._times.popitem(last=False)
        return times

    def retry_after(self, key: str, now: float) -> float:
        times = self._recent(key, now)
        return times[0] + self.window - now if len(times) >= self.limit else 0.0

    def add(self, key: str, now: float) -> int:
        times = self._recent(key, now)
        times.append(now)
        return len(times)

    def forget_last(self, key: str) -> None:
        if self._times.get(key):
            self._times[key].pop()

    def clear(self, key: str) -> None:
        self._times.pop(key, None)


class LoginThrottle:
    def __init__(
        self,
        per_user: int,
        per_address: int,
        window_minutes: float,
        delay_seconds: float,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        window = window_minutes * 60.0
        self._users = _Failures(per_user, window, max_keys)
        self._addresses = _Failures(per_address, window, max_keys)
        self.delay_seconds = delay_seconds
        self._clock = clock
        self._lock = threading.Lock()

    @staticmethod
    def _user_key(username: str) -> str:
        return username[:64].lower()

    def begin(self, username: str, address: str) -> tuple[float, float]:
        """(retry_after, delay): retry_after > 0 refuses the attempt; otherwise it is recorded as a
        failure until ``succeeded``, and a failure is answered after ``delay`` seconds."""
        user = self._user_key(username)
        with self._lock:
            now = self._clock()
            wait = max(self._users.retry_after(user, now), self._addresses.retry_after(address, now))
            if wait > 0:
                return wait, 0.0
            count = self._users.add(user, now)
            self._addresses.add(address, now)
        return 0.0, min(self.delay_seconds * 2 ** (count - 1), MAX_DELAY_SECONDS)

    def succeeded(self, username: str, address: str) -> None:
        with self._lock:
            self._users.clear(self._user_key(username))
            self._addresses.forget_last(address)
