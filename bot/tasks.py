"""Tracked background work with bounded concurrency.

Front ends acknowledge first and hand slow work here. Every task is kept until it finishes,
its failure is logged with an error id and counted, and `drain()` lets shutdown (or the
console) wait for in-flight work. Nothing is fire-and-forget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from bot.errors import BackendUnavailable, ChatOpsError, new_error_id
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


#: how long a process's hold on a pending command lasts without renewal (renewed every third of it)
PENDING_LEASE_SECONDS = 10.0


class PendingRunner:
    """Runs the pending commands (`pending_commands`): the ones this process acknowledged, and any that
    a dead process (or a full queue) left behind once their lease runs out.

    The jobs delete their own row in the transaction that does their work; while one is queued or
    running here, its lease is renewed, so no other process takes it over. `rebuild(kind, payload)`
    turns a row back into its job (None: it cannot be run any more and has been dealt with).
    """

    def __init__(self, db: Any, tasks: TaskRunner, rebuild: Callable[[str, str, dict[str, Any], int],
                                                                     Callable[[], None] | None],
                 *, owner: str, lease_seconds: float = PENDING_LEASE_SECONDS, poll_seconds: float = 1.0) -> None:
        self.db = db
        self.tasks = tasks
        self.rebuild = rebuild
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chatops-pending", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def run(self, key: str, name: str, job: Callable[[], None]) -> bool:
        """Queue the job of a pending row this process holds; False when the queue is full or closed
        (the row stays pending: its lease runs out and it is picked up again)."""
        def held_job() -> None:
            try:
                job()
            finally:
                with self._lock:
                    self._held.discard(key)

        with self._lock:
            self._held.add(key)
        try:
            self.tasks.submit(name, held_job)
        except Busy:
            with self._lock:
                self._held.discard(key)
            log.warning("pending command %s not started now (%s); it will be retried", key, "busy")
            return False
        return True

    def _loop(self) -> None:
        from bot.persistence.idempotency import lease_expired, renew_pending

        failing = False
        next_renew = 0.0
        while not self._stop.wait(0 if next_renew == 0.0 else self.poll_seconds):
            try:
                now = time.monotonic()
                if now >= next_renew:
                    next_renew = now + self.lease_seconds / 3
                    with self._lock:
                        held = list(self._held)
                    if held:
                        with self.db.transaction() as session:
                            renew_pending(session, self.owner, held, self.lease_seconds)
                with self.db.transaction() as session:
                    rows = lease_expired(session, self.owner, self.lease_seconds)
                for key, kind, payload, attempts in rows:
                    log.info("running pending command %s left by an earlier process (attempt %d)", key, attempts)
                    job = self.rebuild(key, kind, payload, attempts)
                    if job is not None:
                        self.run(key, f"pending.{kind}", job)
                if failing:
                    log.warning("pending-command runner recovered")
                    failing = False
            except BackendUnavailable as exc:
                if not failing:
                    log.error("pending-command runner cannot reach the database; retrying: %s", exc)
                    failing = True
            except Exception:
                if not failing:
                    log.exception("pending-command runner failed; retrying")
                    failing = True
