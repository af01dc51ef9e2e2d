"""Group commit for Alertmanager deliveries: the notifications that arrive while one batch is being
written go into the next, one transaction for all of them, each inside a savepoint of its own.

During a storm every delivery would otherwise be its own write transaction, and on SQLite (one writer
at a time) the webhook's threads spent a third of their time queueing for the write lock. A batch takes
the lock once. Each notification keeps its own claim, change, audit record and outbox rows, and its own
outcome: one that fails rolls back to its savepoint and answers with its error, the others still
commit. When the commit itself fails (the database is down) every delivery of the batch gets that
error, so each answers 503 and Alertmanager retries it: nothing is acknowledged that is not on disk.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from bot.core.alerts.payload import Notification

log = logging.getLogger(__name__)
R = TypeVar("R")

class IntakeBatcher(Generic[R]):
    """Runs `accept_many` (one transaction per call) on a thread of its own over whatever has queued up."""

    def __init__(self, accept_many: Callable[[Sequence[Notification]], list[R | Exception]], *,
                 max_batch: int = 32) -> None:
        self.accept_many = accept_many
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Notification, Future[R]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, notification: Notification) -> Future[R]:
        """The delivery's outcome: an `IngestResult`, or the exception that refused it."""
        future: Future[R] = Future()
        self._queue.put((notification, future))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="alert-intake", daemon=True)
                self._thread.start()
        return future

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:  # whatever queued while the last batch was written
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                outcomes = self.accept_many([n for n, _ in batch])
            except BaseException as exc:  # the transaction itself failed: nobody's delivery is stored
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
