"""The bounded inference queue on its own: admission, order, 503s, expiry, disconnected clients, devices.

Inferences are stand-ins that block on an event the test sets, so every assertion is about the order
of events and counts, never about how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest
from fastapi import HTTPException

from lib.server.infer_queue import CLIENT_GONE, INFER_NICE, InferQueue, worker_devices


class Work:
    """Inferences that run until released; records the order they start in and how many run at once."""

    def __init__(self):
        self.release = threading.Event()
        self.started: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, name: str):
        def work(device: str) -> str:
            with self._lock:
                self.started.append(name)
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
            self.release.wait(30)
            with self._lock:
                self.running -= 1
            return f"{name}@{device}"

        return work


async def connected() -> bool:
    return False


async def until(condition, what: str):
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def outcome(task: asyncio.Task):
    try:
        return await task
    except HTTPException as e:
        return e


def test_one_worker_two_waiting_six_requests_three_served_three_refused_then_one_more_served():
    async def scenario():
        queue, work = InferQueue(["cpu"], capacity=2, wait_s=600, poll_s=0.01), Work()
        tasks = [asyncio.create_task(queue.run("wholebody", f"client{i}", work(f"r{i}"), connected)) for i in range(6)]
        await until(lambda: sum(t.done() for t in tasks) == 3, "three requests answered at once")
        snapshot = queue.snapshot()
        assert [r["client_id"] for r in snapshot["running"]] == ["client0"]
        assert [w["client_id"] for w in snapshot["waiting"]] == ["client1", "client2"]

        refused = [await outcome(t) for t in tasks[3:]]
        assert all(isinstance(e, HTTPException) and e.status_code == 503 for e in refused)
        assert all(int(e.headers["Retry-After"]) >= 1 for e in refused)
        assert "3 requests are ahead" in refused[0].detail

        work.release.set()
        served = [await outcome(t) for t in tasks[:3]]
        assert served == ["r0@cpu", "r1@cpu", "r2@cpu"]
        assert work.started == ["r0", "r1", "r2"] and work.most_at_once == 1

        assert await queue.run("wholebody", "later", work("r6"), connected) == "r6@cpu"
        assert queue.snapshot()["counts"] == {"served": 4, "failed": 0, "refused_full": 3, "expired": 0, "dropped": 0}

    asyncio.run(scenario())


def test_never_more_running_than_workers_each_on_its_own_device():
    async def scenario():
        queue, work = InferQueue(["cuda:0", "cuda:1"], capacity=10, wait_s=600, poll_s=0.01), Work()
        tasks = [asyncio.create_task(queue.run("vista3d", f"c{i}", work(f"r{i}"), connected)) for i in range(8)]
        await until(lambda: work.running == 2, "two running")
        assert sorted(r["device"] for r in queue.snapshot()["running"]) == ["cuda:0", "cuda:1"]
        assert len(queue.snapshot()["waiting"]) == 6
        work.release.set()
        results = [await t for t in tasks]
        assert work.most_at_once == 2
        assert {r.split("@")[1] for r in results} == {"cuda:0", "cuda:1"}

    asyncio.run(scenario())


def test_a_request_that_waited_too_long_is_answered_503_and_never_computed():
    async def scenario():
        # Zero seconds of patience: the second request expires at its first look, whatever the clock says.
        queue, work = InferQueue(["cpu"], capacity=5, wait_s=0, poll_s=0.01), Work()
        first = asyncio.create_task(queue.run("wholebody", "a", work("first"), connected))
        await until(lambda: work.started == ["first"], "first started")
        expired = await outcome(asyncio.create_task(queue.run("wholebody", "b", work("second"), connected)))
        assert isinstance(expired, HTTPException) and expired.status_code == 503 and "Retry-After" in expired.headers
        assert "not computed" in expired.detail
        work.release.set()
        assert await first == "first@cpu"
        assert work.started == ["first"], "the expired request was computed"
        assert queue.snapshot()["counts"]["expired"] == 1 and queue.snapshot()["waiting"] == []

    asyncio.run(scenario())


def test_a_request_whose_client_left_is_dropped_before_it_starts_and_frees_its_place():
    async def scenario():
        queue, work = InferQueue(["cpu"], capacity=1, wait_s=600, poll_s=0.01), Work()
        gone = asyncio.Event()

        async def disconnected() -> bool:
            return gone.is_set()

        first = asyncio.create_task(queue.run("wholebody", "a", work("first"), connected))
        await until(lambda: work.started == ["first"], "first started")
        waiting = asyncio.create_task(queue.run("wholebody", "b", work("left"), disconnected))
        await until(lambda: len(queue.snapshot()["waiting"]) == 1, "second waiting")
        gone.set()
        dropped = await outcome(waiting)
        assert isinstance(dropped, HTTPException) and dropped.status_code == CLIENT_GONE
        assert queue.snapshot()["waiting"] == []
        # Its place is free again: a third request waits instead of being refused.
        third = asyncio.create_task(queue.run("wholebody", "c", work("third"), connected))
        await until(lambda: len(queue.snapshot()["waiting"]) == 1, "third waiting")
        work.release.set()
        assert [await first, await third] == ["first@cpu", "third@cpu"]
        assert work.started == ["first", "third"]

    asyncio.run(scenario())


def test_a_failed_inference_frees_its_worker_and_reaches_its_caller():
    async def scenario():
        queue = InferQueue(["cpu"], capacity=1, wait_s=600)

        def broken(device):
            raise ValueError("bad image")

        with pytest.raises(ValueError, match="bad image"):
            await queue.run("spleen", "a", broken, connected)
        assert await queue.run("spleen", "a", lambda device: device, connected) == "cpu"
        assert queue.snapshot()["counts"]["failed"] == 1 and queue.snapshot()["running"] == []

    asyncio.run(scenario())


def test_workers_take_the_gpus_in_turn_or_the_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices(3) == ["cuda:0", "cuda:1", "cuda:0"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert worker_devices(2) == ["cpu", "cpu"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are a Linux feature")
def test_inferences_run_nicer_than_the_threads_answering_light_requests():
    async def scenario():
        queue = InferQueue(["cpu"], capacity=1, wait_s=600)
        return await queue.run("wholebody", "a", lambda device: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), connected)

    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert asyncio.run(scenario()) == min(19, here + INFER_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here, "the caller's thread was reniced"


def test_users_see_only_their_own_requests():
    """Other clients' ids are addresses or names: a user below admin sees their own and how many others wait."""

    async def scenario():
        queue, work = InferQueue(["cpu"], capacity=5, wait_s=600, poll_s=0.01), Work()
        owners = ["anna", "otto", "anna", "otto"]
        tasks = [asyncio.create_task(queue.run("spleen", f"@10.0.0.{i}", work(f"r{i}"), connected, owner)) for i, owner in enumerate(owners)]
        await until(lambda: work.running == 1 and len(queue.snapshot()["waiting"]) == 3, "one running, three waiting")
        anna = queue.snapshot("anna")
        assert [r["client_id"] for r in anna["running"]] == ["@10.0.0.0"] and [w["client_id"] for w in anna["waiting"]] == ["@10.0.0.2"]
        assert anna["others_running"] == 0 and anna["others_waiting"] == 2
        otto = queue.snapshot("otto")
        assert otto["running"] == [] and [w["client_id"] for w in otto["waiting"]] == ["@10.0.0.1", "@10.0.0.3"]
        assert otto["others_running"] == 1 and otto["others_waiting"] == 1
        everyone = queue.snapshot()
        assert len(everyone["waiting"]) == 3 and "others_waiting" not in everyone
        work.release.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
