"""The live status of an environment: the read model behind `/status` and the App Home tab (Slack-free).

`environment_statuses(core, envs, session)` asks every backend of every environment at once, each call on
its own daemon thread, and waits for each until its environment's deadline (`status.timeout_seconds`,
counted from the start): what is running (Kubernetes), the trading state and `/health/detailed` (trading
API), the KPIs (one Prometheus query each). A part that fails or does not answer in time becomes
`Unavailable(reason)`; the others are unaffected, so one hanging backend costs at most the deadline.
A call still running from an earlier look (a hung backend) is joined rather than repeated, so a hang
holds at most one thread per backend call however often people ask.

Runs and locks come from the database through `read_runs()`, the one function holding the queries.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from bot.config import Environment, KpiSettings
from bot.core.analysis import render
from bot.core.model import person
from bot.core.ports import HealthReport, TradingStatus, WorkloadRef, WorkloadStatus
from bot.errors import ChatOpsError, new_error_id
from bot.persistence.models import EnvLock, Run, RunStep
from bot.timeutil import aware, utcnow

log = logging.getLogger(__name__)

#: run states that hold (or wait for) the environment, and the words for every state
ACTIVE_STATES = ("pending_approval", "queued", "running", "rolling_back")
STATE_TEXT = {
    "dry_run": "📝 Dry run", "pending_approval": "⏳ Waiting for approval", "queued": "▶️ Starting",
    "running": "🔄 Running", "rolling_back": "⏪ Rolling back", "succeeded": "✅ Succeeded",
    "rolled_back": "⏪ Rolled back", "failed": "🚨 FAILED — needs a person", "aborted": "🛑 Aborted",
    "expired": "⌛ Expired",
}
RECENT_RUNS = 3


@dataclass(frozen=True)
class Unavailable:
    """A part of the status that could not be read, and why."""

    reason: str

    def __str__(self) -> str:
        return f"unavailable: {self.reason}"


@dataclass(frozen=True)
class KpiValue:
    name: str
    label: str
    format: str  # per_second | percent | ms | number
    value: float | None  # None: Prometheus has no data for it
    warn: bool = False  # beyond its configured threshold


@dataclass(frozen=True)
class LockView:
    kind: str  # run | freeze
    run_id: str | None
    held_by: str
    held_by_name: str | None
    reason: str | None
    acquired_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class RunView:
    id: str
    kind: str  # the run's workflow: deploy, rollback, stop_trading, resume_trading
    version: str
    strategy: str
    state: str
    requested_by: str
    requested_name: str | None
    created_at: datetime
    finished_at: datetime | None
    outcome: str | None
    step: str | None = None  # the step running now (active runs)
    step_no: int | None = None  # its position, 1-based, in its phase
    steps: int | None = None  # steps in that phase
    phase: str | None = None  # main | rollback

    @property
    def state_text(self) -> str:
        return STATE_TEXT.get(self.state, self.state)

    @property
    def who(self) -> str:
        return person(self.requested_by, self.requested_name)


@dataclass(frozen=True)
class RunsView:
    lock: LockView | None
    active: list[RunView]
    recent: list[RunView]


@dataclass(frozen=True)
class EnvStatus:
    name: str
    env: Environment
    workload: WorkloadStatus | Unavailable
    trading: TradingStatus | Unavailable
    health: HealthReport | Unavailable
    kpis: list[KpiValue | Unavailable]
    runs: RunsView | Unavailable
    labels: dict[str, str] = field(default_factory=dict)  # backend kind -> real / simulated description
    took_ms: float = 0.0


# -- the database part -------------------------------------------------------------------------------

def read_runs(session: Session, env: str) -> RunsView:
    """The lock, the active runs (with the step each is at) and the last three finished runs of `env`.
    Every query of the status read model is here."""
    now = utcnow()
    row = session.get(EnvLock, env)
    lock = None
    if row is not None and aware(row.expires_at) > now:  # type: ignore[operator]
        lock = LockView(row.kind, row.run_id, row.held_by, row.held_by_name, row.reason,
                        aware(row.acquired_at), aware(row.expires_at))  # type: ignore[arg-type]
    active_rows = session.execute(
        select(Run).where(Run.environment == env, Run.state.in_(ACTIVE_STATES))
        .order_by(Run.created_at)).scalars().all()
    recent_rows = session.execute(
        select(Run).where(Run.environment == env, Run.state.not_in(ACTIVE_STATES),
                                Run.dry_run.is_(False))
        .order_by(func.coalesce(Run.finished_at, Run.created_at).desc()).limit(RECENT_RUNS)
    ).scalars().all()
    active = []
    for run in active_rows:
        phase = "rollback" if run.state == "rolling_back" else "main"
        steps = session.execute(select(RunStep).where(RunStep.run_id == run.id, RunStep.phase == phase)
                                .order_by(RunStep.idx)).scalars().all()
        current = next((s for s in steps if s.status == "running"), None)
        if current is None and run.state in ("running", "rolling_back"):
            current = next((s for s in steps if s.status == "pending"), None)
        position = steps.index(current) + 1 if current is not None else None
        active.append(_run_view(run, step=current.name if current else None, step_no=position,
                                steps=len(steps), phase=phase))
    return RunsView(lock, active, [_run_view(r) for r in recent_rows])


def _run_view(run: Run, **extra: Any) -> RunView:
    subject = run.subject or {}
    version = str(subject.get("version") or subject.get("mode") or ("gradual" if subject.get("gradual") else ""))
    strategy = str(subject.get("strategy") or run.kind.replace("_", " "))
    return RunView(run.id, run.kind, version, strategy, run.state, run.requested_by, run.requested_name,
                   aware(run.created_at), aware(run.finished_at), run.outcome, **extra)  # type: ignore[arg-type]


# -- the backends part -------------------------------------------------------------------------------

class _Workers:
    """A few daemon threads that run the backend calls (starting a thread per call cost more than the call).
    Daemon, so a call hanging in a backend never holds up the process's exit. Joining calls in flight
    (`_Flights`) bounds how many can hang at once to one per backend part; past `size` busy workers a call
    waits its turn, and the caller's deadline still holds."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle == 0 and self._started < self.size:
                self._started += 1
                threading.Thread(target=self._loop, name=f"status-{self._started}", daemon=True).start()
            else:
                self._idle = max(0, self._idle - 1)  # that worker is spoken for
        self._queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job()
            finally:
                with self._lock:
                    self._idle += 1


class _Flights:
    """Backend calls in flight, by key: a second look while one is still running joins it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[tuple[Any, ...], Future[Any]] = {}
        self._workers = _Workers()

    def start(self, key: tuple[Any, ...], call: Callable[[], Any]) -> Future[Any]:
        with self._lock:
            running = self._running.get(key)
            if running is not None and not running.done():
                return running
            future: Future[Any] = Future()
            self._running[key] = future
        self._workers.submit(lambda: self._run(key, future, call))
        return future

    def _run(self, key: tuple[Any, ...], future: Future[Any], call: Callable[[], Any]) -> None:
        try:
            future.set_result(call())
        except BaseException as exc:  # handed to whoever waits; nothing is lost
            future.set_exception(exc)
        finally:
            with self._lock:
                if self._running.get(key) is future:
                    del self._running[key]

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for f in self._running.values() if not f.done())

    def pending(self) -> list[tuple[Any, ...]]:
        """(environment, part, kpi name) of every call still running."""
        with self._lock:
            return [key[1:] for key, f in self._running.items() if not f.done()]


FLIGHTS = _Flights()


@dataclass
class _Pending:
    env: str
    part: str  # kubernetes | trading | health | kpi
    system: str
    future: Future[Any]
    deadline: float
    timeout: float
    kpi: KpiSettings | None = None


def _calls(core: Any, name: str) -> list[tuple[str, str, KpiSettings | None, Any, Callable[[], Any]]]:
    """(part, system, kpi, backend, call) for every backend read of one environment."""
    env = core.config.environments[name]
    if core.env_backends is None:
        return []
    backends = core.env_backends(name)
    ref = WorkloadRef(env.namespace, env.deployment, env.container)
    calls: list[tuple[str, str, KpiSettings | None, Any, Callable[[], Any]]] = [
        ("kubernetes", "kubernetes", None, backends.cluster, lambda: backends.cluster.workload_status(ref)),
        ("trading", "trading API", None, backends.trading, backends.trading.status),
        ("health", "trading API", None, backends.trading, backends.trading.health_detailed),
    ]
    variables = {"namespace": env.namespace, "deployment": env.deployment}
    for kpi in env.status.effective_kpis():
        def query(kpi: KpiSettings = kpi) -> float | None:
            return backends.metrics.query(render(kpi.query, variables))  # type: ignore[no-any-return]

        calls.append(("kpi", "prometheus", kpi, backends.metrics, query))
    return calls


def _outcome(pending: _Pending) -> Any:
    """The value of one call, or Unavailable: failed, or no answer by its deadline."""
    try:
        return pending.future.result(timeout=max(0.0, pending.deadline - time.monotonic()))
    except FutureTimeout:
        return Unavailable(f"{pending.system} did not answer within {pending.timeout:g} s")
    except ChatOpsError as exc:
        return Unavailable(str(exc))
    except Exception as exc:  # a bug in an integration: logged with an id, never a traceback to users
        error_id = new_error_id()
        log.error("status read %s/%s failed (%s)", pending.env, pending.part, error_id, exc_info=exc)
        return Unavailable(f"{pending.system}: internal error {error_id}")


def _kpi(kpi: KpiSettings, value: Any) -> KpiValue | Unavailable:
    if isinstance(value, Unavailable):
        return value
    warn = value is not None and ((kpi.warn_above is not None and value > kpi.warn_above)
                                  or (kpi.warn_below is not None and value < kpi.warn_below))
    return KpiValue(kpi.name, kpi.label or kpi.name, kpi.format, value, warn)


# -- the read model ----------------------------------------------------------------------------------

def environment_statuses(core: Any, envs: Iterable[str], session: Session | None = None) -> list[EnvStatus]:
    """The live status of each of `envs` (names in `core.config.environments`), all backends asked at
    once. The runs and locks are read with `session`, or, when None (the usual case), in a short read
    session of our own that is closed before the backends are waited for: on SQLite every transaction
    takes the write lock, which must not be held while a backend is slow."""
    started = time.monotonic()
    names = list(envs)
    pending: list[_Pending] = []
    for name in names:
        timeout = core.config.environments[name].status.timeout_seconds
        for part, system, kpi, backend, call in _calls(core, name):
            key = (id(backend), name, part, kpi.name if kpi else "")
            pending.append(_Pending(name, part, system, FLIGHTS.start(key, call), started + timeout, timeout, kpi))
    runs = _all_runs(core, names, session)  # while the backends answer
    results = [(p, _outcome(p)) for p in pending]
    out = []
    for name in names:
        mine = [(p, value) for p, value in results if p.env == name]
        parts = {p.part: value for p, value in mine if p.part != "kpi"}
        kpis = [_kpi(p.kpi, value) for p, value in mine if p.kpi is not None]
        labels = {kind: label for key, label in core.backends.items()
                  for env_name, _, kind in [key.partition(".")] if env_name == name}
        missing = Unavailable("no backends are wired for this environment")
        out.append(EnvStatus(name, core.config.environments[name], parts.get("kubernetes", missing),
                             parts.get("trading", missing), parts.get("health", missing), kpis, runs[name], labels,
                             (time.monotonic() - started) * 1000))
    return out


def environment_status(core: Any, env: str, session: Session | None = None) -> EnvStatus:
    """The live status of one environment (see `environment_statuses`)."""
    return environment_statuses(core, [env], session)[0]


def _all_runs(core: Any, names: list[str], session: Session | None) -> dict[str, RunsView | Unavailable]:
    if session is not None:
        return {name: _runs_or_unavailable(session, name) for name in names}
    try:
        with core.db.read() as own:
            return {name: _runs_or_unavailable(own, name) for name in names}
    except (ChatOpsError, SQLAlchemyError) as exc:  # the database cannot even be opened
        log.warning("status: cannot read runs: %s", exc)
        reason = Unavailable(str(exc) if isinstance(exc, ChatOpsError) else f"database: {type(exc).__name__}")
        return {name: reason for name in names}


def _runs_or_unavailable(session: Session, env: str) -> RunsView | Unavailable:
    try:
        return read_runs(session, env)
    except ChatOpsError as exc:
        return Unavailable(str(exc))
    except SQLAlchemyError as exc:
        log.warning("status: cannot read runs of %s: %s", env, exc)
        return Unavailable(f"database: {type(exc).__name__}")
