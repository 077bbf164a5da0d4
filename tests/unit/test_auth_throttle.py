"""Failed sign-ins: slowed, then refused (429) per user and per address, with bounded memory."""

from __future__ import annotations

from lib.server.auth.throttle import MAX_DELAY_SECONDS, LoginThrottle


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_failures_are_slowed_then_refused_per_user():
    clock = Clock()
    throttle = LoginThrottle(per_user=3, per_address=100, window_minutes=1, delay_seconds=0.5, clock=clock)
    delays = [throttle.begin("alice", f"10.0.0.{i}") for i in range(3)]
    assert delays == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0)]
    retry_after, _ = throttle.begin("Alice", "10.0.0.9")  # another address, same user
    assert retry_after == 60.0
    assert throttle.begin("bob", "10.0.0.0") == (0.0, 0.5)  # other users are not refused
    clock.now += 60
    assert throttle.begin("alice", "10.0.0.1") == (0.0, 0.5)  # the window has passed


def test_failures_are_refused_per_address():
    throttle = LoginThrottle(per_user=100, per_address=3, window_minutes=1, delay_seconds=0.5, clock=Clock())
    for name in ("a", "b", "c"):
        assert throttle.begin(name, "10.0.0.1")[0] == 0.0
    assert throttle.begin("d", "10.0.0.1")[0] > 0
    assert throttle.begin("d", "10.0.0.2")[0] == 0.0


def test_success_forgets_the_users_failures():
    throttle = LoginThrottle(per_user=2, per_address=100, window_minutes=1, delay_seconds=0.5, clock=Clock())
    throttle.begin("alice", "10.0.0.1")
    throttle.begin("alice", "10.0.0.1")
    throttle.succeeded("alice", "10.0.0.1")
    assert throttle.begin("alice", "10.0.0.1") == (0.0, 0.5)


def test_the_delay_is_capped():
    throttle = LoginThrottle(per_user=20, per_address=100, window_minutes=1, delay_seconds=1, clock=Clock())
    delays = [throttle.begin("alice", "10.0.0.1")[1] for _ in range(10)]
    assert max(delays) == MAX_DELAY_SECONDS and delays == sorted(delays)


def test_memory_is_bounded():
    throttle = LoginThrottle(per_user=2, per_address=2, window_minutes=1, delay_seconds=0, max_keys=100, clock=Clock())
    for i in range(10_000):
        throttle.begin(f"user{i}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(throttle._users._times) == 100 and len(throttle._addresses._times) == 100
