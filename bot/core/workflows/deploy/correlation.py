"""Alerts and deploys in one environment, tied together (issue 8 section 6; Slack-free).

* `fail_analysis_for_alert()`: an alert at or above `deploy_correlation.fail_analysis_at` in an
  environment whose deploy is in a canary analysis, a blue-green watch or a monitoring window records a
  `RunSignal` on that run (in the alert's own transaction, audited, noted in the run's thread) and wakes
  the executor. The analysis loops wait with `analysis_wait()`, which checks for such a signal between
  short waits, so the analysis fails within a fraction of a second: pushed, not found at the next query
  interval. The signal is durable: a run resumed by another process still sees it.
* `suspect_deploy()`: "started 4 min after deploy v2.3 by alice, approved by bob, carol" for an alert
  that starts within `deploy_correlation.suspect_window_minutes` of a deploy.
* `rollback_candidate()`: the deploy an alert's Roll back button is about (running, or finished within
  `deploy_correlation.rollback_window_minutes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bot.config import Config
from bot.core.model import person
from bot.core.runs.context import StepContext, StepFailed
from bot.core.runs.states import Phase, RunState, StepStatus
from bot.core.runs.store import RunStore
from bot.persistence.models import Approval, Run, RunSignal, RunStep
from bot.timeutil import aware, utcnow

FAIL_ANALYSIS = "fail_analysis"
#: how often an analysis wait looks for a signal (the wait itself wakes on every commit that kicks the executor)
SIGNAL_POLL_SECONDS = 0.5
DEPLOY_KINDS = ("deploy", "rollback")
#: severities by rank; Alertmanager's usual `warning`/`info` and PagerDuty's words map onto runbook 7.4's levels
SEVERITY_RANK = {"critical": 4, "page": 4, "p1": 4, "high": 3, "error": 3, "major": 3, "p2": 3,
                 "medium": 2, "warning": 2, "minor": 2, "p3": 2, "low": 1, "info": 1, "p4": 1, "none": 0}


def severity_rank(severity: str | None) -> int:
    """Rank of a severity label (unknown or missing: 0, below every threshold)."""
    return SEVERITY_RANK.get((severity or "").strip().lower(), 0)


@dataclass(frozen=True)
class AlertFact:
    """What correlation needs to know about an alert (or an alert group)."""

    env: str
    name: str
    severity: str
    summary: str = ""
    key: str = ""  # the group key / fingerprint: a repeated delivery does not signal twice


def _analysing(run: Run, step: RunStep) -> str | None:
    """What analysis `step` is doing right now ('the canary analysis', ...), or None."""
    if step.kind == "monitor":
        return "the monitoring window"
    if step.kind == "rollout" and not (step.data or {}).get("promoting"):
        strategy = (run.plan or {}).get("strategy")
        if strategy == "canary":
            return "the canary analysis"
        if strategy == "blue-green":
            return "the blue-green watch"
    return None


def active_analysis(session: Session, env: str) -> tuple[Run, RunStep, str] | None:
    """The deploy in `env` that is analysing now: (run, its running step, what it is doing)."""
    runs = session.execute(select(Run).where(Run.environment == env, Run.kind == "deploy",
                                             Run.state == RunState.running.value)).scalars().all()
    for run in runs:
        step = session.execute(select(RunStep).where(RunStep.run_id == run.id, RunStep.phase == Phase.main.value,
                                                     RunStep.status == StepStatus.running.value)).scalars().first()
        if step is not None:
            what = _analysing(run, step)
            if what is not None:
                return run, step, what
    return None


def fail_analysis_for_alert(session: Session, store: RunStore, config: Config, alert: AlertFact) -> Run | None:
    """Fail the analysis running in the alert's environment, if the alert is severe enough; the run signalled,
    or None (no such environment, below the threshold, nothing analysing, already signalled for this key)."""
    env = config.environments.get(alert.env)
    if env is None:
        return None
    threshold = env.deploy_correlation.fail_analysis_at
    if threshold is None or severity_rank(alert.severity) < severity_rank(threshold):
        return None
    found = active_analysis(session, alert.env)
    if found is None:
        return None
    run = store.load(session, found[0].id)  # FOR UPDATE: one signal per key even with two deliveries at once
    what = found[2]
    key = (alert.key or alert.name)[:200]
    if session.execute(select(RunSignal.id).where(RunSignal.run_id == run.id,
                                                  RunSignal.dedup_key == key)).first() is not None:
        return None
    summary = f": {alert.summary}" if alert.summary else ""
    reason = f"alert {alert.name} ({alert.severity}) fired in {alert.env} during {what}{summary}"
    session.add(RunSignal(run_id=run.id, kind=FAIL_ANALYSIS, source="alertmanager", reason=reason[:1000],
                          detail={"alert": alert.name, "severity": alert.severity, "key": key, "what": what},
                          dedup_key=key, created_at=utcnow()))
    store.audit(session, run, None, "deploy.alert_signal", "fail_analysis", alert=alert.name,
                severity=alert.severity, key=key)
    store.thread(session, run, f":rotating_light: Alert *{_plain(alert.name)}* ({_plain(alert.severity)}) fired in "
                               f"{alert.env}: failing {what} now{_plain(summary)}")
    store.wake_after_commit(session)
    return run


def _plain(text: str) -> str:
    """Alert text is outside input: no markup or mentions in the bot's voice."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def raise_if_alerted(ctx: StepContext) -> None:
    """Fail the step (StepFailed: the run rolls back) if an alert signalled this run; marks the signal used."""
    with ctx.executor.db.read() as session:
        signal = session.execute(select(RunSignal).where(RunSignal.run_id == ctx.run_id,
                                                         RunSignal.kind == FAIL_ANALYSIS,
                                                         RunSignal.consumed_at.is_(None))
                                 .order_by(RunSignal.id).limit(1)).scalar_one_or_none()
        reason = signal.reason if signal is not None else None
        signal_id = signal.id if signal is not None else None
    if signal_id is None or reason is None:
        return
    with ctx.executor.db.transaction() as session:
        session.execute(update(RunSignal).where(RunSignal.id == signal_id).values(consumed_at=utcnow()))
    raise StepFailed(reason)


def analysis_wait(ctx: StepContext, seconds: float) -> None:
    """`ctx.wait(seconds)` for an analysis loop, failing the step as soon as an alert signals the run."""
    left = seconds
    while True:
        raise_if_alerted(ctx)
        if left <= 0:
            return
        chunk = min(SIGNAL_POLL_SECONDS, left)
        ctx.wait(chunk)
        left -= chunk


# --- deploy context for alerts -------------------------------------------------------------------------
def _minutes(delta: timedelta) -> str:
    minutes = max(0, round(delta.total_seconds() / 60))
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


def _who(session: Session, run: Run) -> str:
    approvers = [person(a.user_id, a.user_name) for a in session.execute(
        select(Approval).where(Approval.run_id == run.id).order_by(Approval.created_at)).scalars()]
    by = person(run.requested_by, run.requested_name)
    return f" by {by}" + (f", approved by {', '.join(approvers)}" if approvers else "")


def _version(run: Run) -> str:
    subject: dict[str, Any] = run.subject or {}
    return str(subject.get("version") or (run.plan or {}).get("version") or "?")


def _executed(session: Session, env: str) -> list[Run]:
    return list(session.execute(select(Run).where(Run.environment == env, Run.kind.in_(DEPLOY_KINDS),
                                                  Run.started_at.is_not(None), Run.dry_run == False)  # noqa: E712
                                .order_by(Run.started_at.desc()).limit(20)).scalars())


def suspect_deploy(session: Session, config: Config, env: str, starts_at: datetime) -> str | None:
    """'started 4 min after deploy v2.3 by alice, approved by bob, carol' when a deploy (or rollback) in `env`
    was running at `starts_at` or finished at most `suspect_window_minutes` before it; else None."""
    environment = config.environments.get(env)
    if environment is None:
        return None
    window = timedelta(minutes=environment.deploy_correlation.suspect_window_minutes)
    start = aware(starts_at)
    assert start is not None
    for run in _executed(session, env):
        began, ended = aware(run.started_at), aware(run.finished_at)
        assert began is not None
        if began > start:
            continue
        what = "deploy" if run.kind == "deploy" else "rollback to"
        if ended is None or ended >= start:
            return f"started during {what} {_version(run)}{_who(session, run)} ({_minutes(start - began)} in)"
        if start - ended <= window:
            return f"started {_minutes(start - ended)} after {what} {_version(run)}{_who(session, run)}"
        return None  # older runs finished even earlier
    return None


def rollback_candidate(session: Session, config: Config, env: str, now: datetime | None = None) -> Run | None:
    """The newest deploy in `env` that is running or finished within `rollback_window_minutes` (and did not
    already roll itself back): the one an alert's Roll back button offers to undo."""
    environment = config.environments.get(env)
    if environment is None:
        return None
    window = timedelta(minutes=environment.deploy_correlation.rollback_window_minutes)
    moment = aware(now) or utcnow()
    for run in _executed(session, env):
        if run.kind != "deploy":
            return None  # a rollback happened since: nothing newer to undo
        ended = aware(run.finished_at)
        if run.state in (RunState.running.value, RunState.queued.value):
            return run
        if run.state == RunState.succeeded.value and ended is not None and moment - ended <= window:
            return run
        return None
    return None
