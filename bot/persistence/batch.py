"""One writer thread for the audit records of commands answered in the ack (/help, refusals, usage errors).

Those answers need no transaction of their own, so their idempotency claims and audit records are
queued here and written many to a transaction: one head-row lock per batch instead of per command,
which keeps a burst of commands from queueing behind each other on the database. Items stay queued
(and are retried) while the database is down, and `stop()` flushes what is left.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.persistence.audit import AuditEntry, append
from bot.persistence.db import Database
from bot.persistence.idempotency import claim

log = logging.getLogger(__name__)
MAX_BATCH = 500


@dataclass(frozen=True)
class Record:
    key: str
    kind: str
    entry: AuditEntry
    on_written: Callable[[bool], None]  # called with False when the key was claimed before (a duplicate)


class BatchWriter:
    def __init__(self, db: Database, *, max_queued: int = 50_000) -> None:
        self.db = db
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=max_queued)
        self._pending = 0
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chatops-audit-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, record: Record) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(record)

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

    def _loop(self) -> None:
        batch: list[Record] = []
        failing_since: float | None = None
        while not (self._stop.is_set() and not batch and self._queue.empty()):
            if not batch:
                try:
                    batch.append(self._queue.get(timeout=0.2))
                except queue.Empty:
                    continue
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                written = self._write(batch)
            except Exception:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.exception("audit writer cannot write %d record(s); keeping them and retrying", len(batch))
                time.sleep(1.0)
                continue
            if failing_since is not None:
                log.warning("audit writer recovered after %.0fs", time.monotonic() - failing_since)
                failing_since = None
            for record, fresh in zip(batch, written, strict=True):
                try:
                    record.on_written(fresh)
                except Exception:
                    log.exception("audit writer callback failed")
            with self._lock:
                self._pending -= len(batch)
                self._lock.notify_all()
            batch = []

    def _write(self, batch: list[Record]) -> list[bool]:
        out = []
        with self.db.transaction() as session:
            for record in batch:
                fresh = claim(session, record.key, record.kind)
                if fresh:
                    append(session, record.entry)
                out.append(fresh)
        return out
