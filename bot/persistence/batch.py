"""Group commit for the ack path: what must be durable before Slack gets its 200.

Every acknowledged delivery leaves a row here first: for an answer given in the ack (/help, refusals,
usage errors) its idempotency claim and audit record; for a deferred command its `pending_commands`
row. One writer thread takes everything queued while the previous commit was in flight and writes
it in one transaction (one head-row lock, one fsync), so a burst of requests shares a commit instead
of queueing behind each other. `submit()` returns a future that the ack awaits: True once committed,
False for a duplicate delivery, an exception when nothing was recorded. A future cancelled before
its batch starts is skipped (its ack already said "not recorded"); nothing is retried behind the
caller's back.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from bot.errors import BackendUnavailable
from bot.persistence.audit import AuditEntry, append_many
from bot.persistence.db import Database
from bot.persistence.idempotency import add_pending_many, claim_many

log = logging.getLogger(__name__)
MAX_BATCH = 500


@dataclass(frozen=True)
class Record:
    """An answer already given in the ack: claim its key, append its audit record."""

    key: str
    kind: str
    entry: AuditEntry
    on_written: Callable[[bool], None]  # called with False when the key was claimed before (a duplicate)


@dataclass(frozen=True)
class Pending:
    """A deferred delivery: record it as pending so that a restart (or another replica) runs it."""

    key: str
    kind: str
    payload: dict[str, Any]
    on_written: Callable[[bool], None] = field(default=lambda _fresh: None)  # after commit: start the job


Item = Record | Pending


class BatchWriter:
    def __init__(self, db: Database, *, owner: str = "local", lease_seconds: float = 10.0,
                 max_queued: int = 50_000) -> None:
        self.db = db
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._queue: queue.Queue[tuple[Item, Future[bool]]] = queue.Queue(maxsize=max_queued)
        self._pending = 0
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chatops-ack-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: Item) -> Future[bool]:
        future: Future[bool] = Future()
        with self._lock:
            self._pending += 1
        try:
            self._queue.put_nowait((item, future))
        except queue.Full:
            self._done(1)
            future.set_exception(BackendUnavailable("database", "too many writes queued"))
        return future

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._pending

    def drain(self, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self._pending == 0, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self.drain(timeout)
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _done(self, n: int) -> None:
        with self._lock:
            self._pending -= n
            self._lock.notify_all()

    def _loop(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:  # everything that arrived while the last commit was in flight
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if len(live) < len(batch):
                self._done(len(batch) - len(live))
            if live:
                self._commit(live)

    def _commit(self, batch: list[tuple[Item, Future[bool]]]) -> None:
        try:
            results = self._write([item for item, _ in batch])
        except BackendUnavailable as exc:
            log.error("database unavailable: %d acknowledgement(s) could not be recorded: %s", len(batch), exc)
            self._fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) > 1:  # one bad item must not sink the others: write them one by one
                for one in batch:
                    self._commit([one])
                return
            log.exception("could not record %s", batch[0][0].key)
            self._fail(batch, exc)
            return
        for (item, future), fresh in zip(batch, results, strict=True):
            try:
                item.on_written(fresh)
            except Exception:
                log.exception("ack writer callback failed")
            future.set_result(fresh)
        self._done(len(batch))

    def _fail(self, batch: list[tuple[Item, Future[bool]]], exc: Exception) -> None:
        for _, future in batch:
            future.set_exception(exc)
        self._done(len(batch))

    def _write(self, batch: list[Item]) -> list[bool]:
        """One transaction, a handful of statements whatever the batch size: the claims in one insert,
        the audit records of the fresh ones in one append, the pending rows in one insert."""
        records = [(i, item) for i, item in enumerate(batch) if isinstance(item, Record)]
        pendings = [(i, item) for i, item in enumerate(batch) if isinstance(item, Pending)]
        out = [False] * len(batch)
        with self.db.transaction() as session:
            fresh = claim_many(session, [(item.key, item.kind) for _, item in records])
            append_many(session, [item.entry for (_, item), new in zip(records, fresh, strict=True) if new])
            for (i, _), new in zip(records, fresh, strict=True):
                out[i] = new
            added = add_pending_many(session, [(item.key, item.kind, item.payload) for _, item in pendings],
                                     owner=self.owner, lease_seconds=self.lease_seconds)
            for (i, _), new in zip(pendings, added, strict=True):
                out[i] = new
        return out
