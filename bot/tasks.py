"""Tracked background work with bounded concurrency.

Front ends acknowledge first and hand slow work here. Every task is kept until it finishes,
its failure is logged with an error id and counted, and `drain()` lets shutdown (or the
console) wait for in-flight work. Nothing is fire-and-forget.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from bot.errors import ChatOpsError, new_error_id
from bot.metrics import Metrics

log = logging.getLogger(__name__)


class Busy(ChatOpsError):
    outcome = "busy"


class TaskRunner:
    def __init__(self, metrics: Metrics, *, workers: int, max_queued: int = 1000) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chatops-task")
        self._metrics = metrics
        self._max_queued = max_queued
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._futures: set[Future[None]] = set()
        self._closed = False

    def submit(self, name: str, fn: Callable[[], None]) -> Future[None]:
        with self._lock:
            if self._closed:
                raise Busy("the bot is shutting down; try again in a moment")
            if len(self._futures) >= self._max_queued:
                raise Busy("the bot is overloaded right now; try again in a moment")
            future = self._pool.submit(self._run, name, fn)
            self._futures.add(future)
            self._metrics.tasks_in_flight.set(len(self._futures))
        self._metrics.tasks_started.labels(name).inc()
        future.add_done_callback(self._done)
        return future

    def _run(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            error_id = new_error_id()
            self._metrics.tasks_failed.labels(name).inc()
            log.error("background task %s failed (error id %s)", name, error_id, exc_info=exc)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
            self._metrics.tasks_in_flight.set(len(self._futures))
            if not self._futures:
                self._idle.notify_all()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._futures)

    def drain(self, timeout: float) -> bool:
        """Wait until no task is queued or running; False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._futures, timeout=timeout)

    def shutdown(self, grace: float) -> bool:
        with self._lock:
            self._closed = True
        finished = self.drain(grace)
        if not finished:
            log.warning("shutdown: %d background task(s) still running after %.0fs; their database "
                        "transactions either committed or will be retried on redelivery", self.in_flight, grace)
        self._pool.shutdown(wait=finished, cancel_futures=True)
        return finished
