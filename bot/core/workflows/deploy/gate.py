"""The analysis gate: the one loop that judges a change by its metrics, interval after interval — a canary
step, the post-deploy monitoring window, the blue-green watch after the switch.

Each interval: wait, ask the `signals` (external reasons to fail at once), run the checks, count the
verdict in an `AnalysisTracker` (failed / inconclusive results, and Prometheus errors apart from them:
`error_limit` in a row, Argo Rollouts' `consecutiveErrorLimit`), record it (audit, thread, the step's
`analysis` line of the live message) and stop when the tracker decides or the watch window is over.
Progress lives in the step's data, so a resumed step continues the count.

External signals: `signals` are callables `(ctx) -> reason | None`, asked at the start of every interval
before any query; the first reason fails the analysis at once ("<reason> → rolled back"). The deploy
workflow passes its `analysis_signals` (empty by default) to every gate; e.g. an alert correlated with the
running deploy fails its canary without waiting for the next failed interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.core.analysis import AnalysisResult, AnalysisTracker, Check, analyse
from bot.core.runs.context import StepContext, StepFailed
from bot.core.workflows.deploy.common import clip
from bot.core.workflows.deploy.correlation import analysis_wait

Signal = Callable[[StepContext], str | None]


@dataclass(frozen=True)
class GateLimits:
    """`intervals_required` passed intervals promote; None: no early promotion, watch for `window` seconds.
    `inconclusive_limit` None: inconclusive results never fail (a watch window only fails on real failures)."""

    failure_limit: int = 1
    inconclusive_limit: int | None = 3
    error_limit: int = 4
    intervals_required: int | None = 1


@dataclass(kw_only=True)
class AnalysisGate:
    ctx: StepContext
    label: str  # "Canary 50%", "Monitoring", "Green": how the thread names each verdict
    failing_as: str  # "canary analysis at 50%", "monitoring window": how a failure names the gate
    checks: Sequence[Check]
    variables: Mapping[str, str]
    interval: float
    limits: GateLimits
    window: float | None = None  # seconds to watch (with intervals_required None)
    at: str = ""  # "50%": where the verdict on the live message's analysis line was reached
    audit_args: Mapping[str, Any] = field(default_factory=dict)
    signals: Sequence[Signal] = ()
    elapsed_key: str = "elapsed"

    def _tracker(self) -> AnalysisTracker:
        saved = self.ctx.data.get("tracker")
        if saved:
            return AnalysisTracker.from_dict(saved)
        # a watch window never promotes early and never fails on inconclusive data: its limits are
        # set past the number of intervals it has
        beyond = math.ceil((self.window or 0) / max(self.interval, 1e-9)) + 1
        lim = self.limits
        return AnalysisTracker(failure_limit=lim.failure_limit,
                               inconclusive_limit=lim.inconclusive_limit or beyond,
                               intervals_required=lim.intervals_required or beyond, error_limit=lim.error_limit)

    def external_failure(self) -> str | None:
        """The hook for external signals: the first reason any signal gives to fail now, else None."""
        for signal in self.signals:
            reason = signal(self.ctx)
            if reason:
                return reason
        return None

    def unmeasured(self) -> str:
        """"" or, for a result line, how many intervals had no metrics at all (they never pass a window)."""
        errors = int(self.ctx.data.get("analysis_errors", 0))
        return f"; {errors} interval(s) without metrics (Prometheus unreachable)" if errors else ""

    def run(self) -> AnalysisTracker:
        """Judge until the tracker decides (or the window ends); raises StepFailed on a rollback decision.
        Returns the tracker (decision "promote", or "continue" when the window ended without a failure)."""
        tracker = self._tracker()
        elapsed = float(self.ctx.data.get(self.elapsed_key, 0.0))
        while not tracker.decided and (self.window is None or elapsed < self.window):
            step = self.interval if self.window is None else min(self.interval, self.window - elapsed)
            analysis_wait(self.ctx, step)  # wakes at once when an alert fails this run (correlation.py)
            elapsed += step
            reason = self.external_failure()
            if reason:
                self.ctx.audit("deploy.analysis", "fail", **self.audit_args, decision="rollback", cause=reason)
                self.ctx.save(**{self.elapsed_key: elapsed}, analysis=clip(f"failed: {reason}", 240))
                raise StepFailed(f"{reason} → rolled back ({self.failing_as})")
            result = analyse(self.ctx.backends.metrics, self.checks, self.variables)
            self._judge(tracker, result, elapsed)
        return tracker

    @property
    def _at(self) -> str:
        return f" at {self.at}" if self.at else ""

    def _judge(self, tracker: AnalysisTracker, result: AnalysisResult, elapsed: float) -> None:
        ctx = self.ctx
        when = self.label + (f" ({elapsed:.0f}/{self.window:.0f}s)" if self.window is not None else "")
        down = result.unreachable
        if down is not None:  # nothing could be read: an error, counted apart (consecutive limit)
            decision = tracker.record_error(down)
            ctx.data["analysis_errors"] = int(ctx.data.get("analysis_errors", 0)) + 1  # saved just below
            ctx.audit("deploy.analysis", "error", **self.audit_args, decision=decision, cause=down,
                      consecutive=tracker.consecutive_errors)
            line = f"no analysis{self._at} — {down} ({tracker.consecutive_errors} of {tracker.error_limit} in a row)"
            if decision != "rollback":  # the rollback itself is said once, by the run's failure
                ctx.note(f"{when}: *no analysis* — {down} ({tracker.consecutive_errors} of "
                         f"{tracker.error_limit} in a row)")
            ctx.save(**{self.elapsed_key: elapsed}, tracker=tracker.to_dict(), analysis=clip(line, 240))
            if decision == "rollback":
                cause = down.split(": ", 1)[1] if ": " in down else down
                raise StepFailed(f"{tracker.reason} → rolled back ({self.failing_as}; last error: {cause})")
            return
        decision = tracker.record(result)
        ctx.audit("deploy.analysis", result.verdict, **self.audit_args, decision=decision, summary=result.summary())
        if decision != "rollback":
            ctx.note(f"{when}: *{result.verdict}* — {result.summary()}")
        ctx.save(**{self.elapsed_key: elapsed}, tracker=tracker.to_dict(),
                 analysis=clip(f"{result.verdict}{self._at} ({result.summary()})", 240))
        if decision == "rollback":
            failed = " · ".join(c.summary() for c in result.checks if c.verdict in ("fail", "error"))
            raise StepFailed(f"{self.failing_as}: {tracker.reason} — {failed or result.summary()}")
