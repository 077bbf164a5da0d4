"""A bounded inference queue, one worker per device.

At most ``workers`` inferences compute at once, each on its own device (one per GPU, or the CPU), in the
queue's own threads; at most ``capacity`` more wait for a free worker, first come first served. So the
server's peak memory is that of ``workers`` concurrent requests however many arrive, and the event loop
only bookkeeps. Like Triton's ``max_queue_size`` and TorchServe's ``job_queue_size``, what does not fit
is answered at once:

* queue full: 503, ``Retry-After`` and how many requests are ahead;
* waited longer than ``wait_s``: 503, never computed;
* the client disconnected while it waited: dropped before it starts.

Inference threads run at a lower CPU priority (``INFER_NICE``) than the threads answering light requests.

Each request's wait and run time is logged; :meth:`InferQueue.snapshot` is ``GET /queue/``.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

import torch
from fastapi import HTTPException

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Nginx's code for "client closed request": nobody reads it, the log does.
CLIENT_GONE = 499

# Inference threads, and the torch threads they start (which inherit it), run this much nicer than the
# threads that answer everything else: on a CPU those get a core at once instead of a share of it.
INFER_NICE = 10


def lower_thread_priority() -> None:
    """Renice the calling thread only (Linux: a thread id given to setpriority is that thread)."""
    if not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + INFER_NICE))
    except OSError as e:
        logger.warning(f"inference threads keep the server's CPU priority: {e}")


def default_workers() -> int:
    """One worker per GPU, else one on the CPU (torch already uses every core for one request)."""
    return torch.cuda.device_count() or 1


def worker_devices(workers: int) -> list[str]:
    """The device of each worker: GPUs in turn, or the CPU."""
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    return [gpus[i % len(gpus)] for i in range(workers)]


@dataclass
class Ticket:
    number: int
    model: str
    client_id: str
    arrived: float  # time.monotonic()
    owner: str | None = None  # the signed-in user who asked (None without accounts)
    started: float | None = None
    device: str | None = None
    turn: asyncio.Future | None = field(default=None, repr=False)

    def describe(self, now: float) -> dict[str, Any]:
        answer = {"id": self.number, "model": self.model, "client_id": self.client_id, "age_s": round(now - self.arrived, 2)}
        if self.started is not None:
            answer.update(device=self.device, waited_s=round(self.started - self.arrived, 2), running_s=round(now - self.started, 2))
        return answer


class InferQueue:
    def __init__(self, devices: list[str], capacity: int, wait_s: float, poll_s: float = 1.0):
        if not devices:
            raise ValueError("an inference queue needs at least one worker")
        self.devices = list(devices)
        self.capacity = capacity
        self.wait_s = wait_s
        self._poll_s = poll_s
        self._free = list(devices)  # devices of idle workers
        self._running: list[Ticket] = []
        self._waiting: deque[Ticket] = deque()
        self._numbers = itertools.count(1)
        self._run_times: deque[float] = deque(maxlen=20)
        self._counts = {"served": 0, "failed": 0, "refused_full": 0, "expired": 0, "dropped": 0}
        self._executor = ThreadPoolExecutor(len(devices), thread_name_prefix="infer", initializer=lower_thread_priority)

    @property
    def workers(self) -> int:
        return len(self.devices)

    async def run(
        self, model: str, client_id: str, work: Callable[[str], T], disconnected: Callable[[], Awaitable[bool]], owner: str | None = None
    ) -> T:
        """``work(device)`` in a worker thread once a worker is free; raises 503 or drops the request as above."""
        ticket = Ticket(next(self._numbers), model, client_id, time.monotonic(), owner)
        self._admit(ticket)
        try:
            if ticket.started is None:
                await self._wait_for_turn(ticket, disconnected)
            gone = await disconnected()
        except BaseException:  # 503 after too long a wait, client gone, or the server shutting down
            self._leave(ticket)
            raise
        if gone:
            self._leave(ticket)
            self._counts["dropped"] += 1
            logger.info(f"infer {model} for '{client_id}': client disconnected after waiting {ticket.started - ticket.arrived:.1f} s; not computed")
            raise HTTPException(status_code=CLIENT_GONE, detail="the client disconnected before its inference started")

        loop = asyncio.get_running_loop()
        # In a copy of the request's context, as FastAPI's own thread pool runs endpoints (the signed-in user).
        future = loop.run_in_executor(self._executor, contextvars.copy_context().run, work, ticket.device)
        # Released when the computation ends, even if this coroutine is cancelled meanwhile.
        future.add_done_callback(lambda done: self._finished(ticket, done))
        return await asyncio.shield(future)

    def snapshot(self, owner: str | None = None) -> dict[str, Any]:
        """Every request, or with ``owner`` only that user's: others' client ids and addresses are theirs
        (how many run and wait ahead of one's own still shows)."""
        now = time.monotonic()
        answer = {"workers": self.workers, "devices": self.devices, "capacity": self.capacity, "wait_s": self.wait_s}
        for state, tickets in (("running", self._running), ("waiting", self._waiting)):
            shown = [t for t in tickets if owner is None or t.owner == owner]
            answer[state] = [t.describe(now) for t in shown]
            if owner is not None:
                answer[f"others_{state}"] = len(tickets) - len(shown)
        answer["counts"] = dict(self._counts)
        return answer

    # --- all below runs on the event loop: no lock needed ---
    def _admit(self, ticket: Ticket) -> None:
        if self._free and not self._waiting:
            self._start(ticket)
            return
        if len(self._waiting) >= self.capacity:
            self._counts["refused_full"] += 1
            ahead = len(self._running) + len(self._waiting)
            logger.warning(f"infer {ticket.model} for '{ticket.client_id}': queue full, {ahead} ahead; answered 503")
            raise self._unavailable(
                f"the inference queue is full: {ahead} requests are ahead of this one "
                f"({len(self._running)} running, {len(self._waiting)} waiting, at most {self.capacity} may wait); try again later",
                ahead,
            )
        ticket.turn = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)

    async def _wait_for_turn(self, ticket: Ticket, disconnected: Callable[[], Awaitable[bool]]) -> None:
        deadline = ticket.arrived + self.wait_s
        while ticket.started is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._counts["expired"] += 1
                ahead = self._waiting.index(ticket) + len(self._running)
                logger.warning(f"infer {ticket.model} for '{ticket.client_id}': waited {self.wait_s:.0f} s; answered 503, not computed")
                raise self._unavailable(
                    f"waited {self.wait_s:.0f} s (infer_wait_s) for a free inference worker; not computed. "
                    f"{ahead} requests were ahead; try again later",
                    ahead,
                )
            try:
                await asyncio.wait_for(asyncio.shield(ticket.turn), min(left, self._poll_s))
            except asyncio.TimeoutError:
                pass
            if ticket.started is None and await disconnected():
                self._counts["dropped"] += 1
                logger.info(f"infer {ticket.model} for '{ticket.client_id}': client disconnected while waiting; dropped")
                raise HTTPException(status_code=CLIENT_GONE, detail="the client disconnected while its inference waited")

    def _start(self, ticket: Ticket) -> None:
        ticket.device = self._free.pop(0)
        ticket.started = time.monotonic()
        self._running.append(ticket)
        if ticket.turn is not None and not ticket.turn.done():
            ticket.turn.set_result(None)

    def _leave(self, ticket: Ticket) -> None:
        """A request gives up its place: a waiting one leaves the line, one that was given a worker frees it."""
        if ticket in self._waiting:
            self._waiting.remove(ticket)
        elif ticket in self._running:
            self._release(ticket)

    def _release(self, ticket: Ticket) -> None:
        self._running.remove(ticket)
        self._free.append(ticket.device)
        while self._free and self._waiting:
            self._start(self._waiting.popleft())

    def _finished(self, ticket: Ticket, done: asyncio.Future) -> None:
        ran = time.monotonic() - ticket.started
        self._run_times.append(ran)
        failed = done.cancelled() or done.exception() is not None
        self._counts["failed" if failed else "served"] += 1
        logger.info(
            f"infer {ticket.model} for '{ticket.client_id}' on {ticket.device}: waited {ticket.started - ticket.arrived:.2f} s, "
            f"ran {ran:.2f} s{' (failed)' if failed else ''}"
        )
        self._release(ticket)

    def _unavailable(self, message: str, ahead: int) -> HTTPException:
        typical = sum(self._run_times) / len(self._run_times) if self._run_times else 10.0
        retry_after = max(1, math.ceil(typical * (ahead + 1) / self.workers))
        return HTTPException(status_code=503, detail=message, headers={"Retry-After": str(retry_after)})
