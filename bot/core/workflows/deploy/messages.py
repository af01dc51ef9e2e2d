"""The run's living message: plan, approvals, checklist with durations, canary state, final summary."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot import blocks
from bot.core.model import Reply, person
from bot.core.runs.states import Phase, RunState
from bot.core.workflows.deploy.common import clip
from bot.core.workflows.deploy.plan import describe_duration, plan_of, subject_of
from bot.ids import ActionId, encode_value
from bot.persistence.models import Approval, Run, RunStep
from bot.timeutil import aware, utcnow

ICONS = {"pending": "⬜", "running": "🔄", "done": "✅", "failed": "❌", "skipped": "⏭️", "waiting": "⏳"}
STATE_TEXT = {
    RunState.dry_run: "📝 Dry run: plan only, nothing will be changed",
    RunState.pending_approval: "⏳ Waiting for approval",
    RunState.queued: "▶️ Starting",
    RunState.running: "🔄 Running",
    RunState.rolling_back: "⏪ Rolling back",
    RunState.succeeded: "✅ Succeeded",
    RunState.rolled_back: "⏪ Rolled back",
    RunState.failed: "🚨 FAILED — needs a person",
    RunState.aborted: "🛑 Aborted",
    RunState.expired: "⌛ Expired: approvals did not arrive in time",
}


def _duration(step: RunStep) -> str:
    start, end = aware(step.started_at), aware(step.finished_at)
    if start is None:
        return ""
    return f" ({describe_duration(((end or utcnow()) - start).total_seconds())})"


def step_line(step: RunStep, *, said: str | None = None) -> str:
    """One step: icon, name, duration, the canary's weight and latest verdict while it runs, the result.
    `said`: text shown elsewhere in the message (why it rolled back); a failure it already gives is not
    repeated under the step."""
    icon = ICONS.get(step.status, "•")
    if step.kind == "checklist" and step.status == "running":
        icon = ICONS["waiting"]
    line = f"{icon} {step.name}{_duration(step)}"
    data = step.data or {}
    failed = step.status == "failed"
    if step.kind == "rollout" and data.get("weight") is not None and step.status == "running":
        line += f" — canary at *{data['weight']}%*"
    if data.get("analysis") and not failed:  # a failed step's detail says how its analysis ended
        line += f" — analysis: {data['analysis']}"
    repeated = failed and said is not None and bool(step.detail) and (
        (step.detail or "").removeprefix("interrupted: ") in said)
    if step.detail and step.status in ("failed", "skipped", "done", "running") and not repeated:
        line += f"\n      _{clip(step.detail, 300)}_"
    return line


def _who(user_id: str | None, name: str | None) -> str:
    return person(user_id, name)


def render_run(run: Run, steps: list[RunStep], approvals: list[Approval], *, title: str | None = None,
               footer: str | None = None) -> Reply:
    state = RunState(run.state)
    plan = plan_of(run)
    subj = subject_of(run)
    title = title or f"Deploy {subj.version} → {run.environment} ({subj.strategy})"
    facts = [
        ("Requested by", _who(run.requested_by, run.requested_name)),
        ("State", STATE_TEXT[state]),
        ("Image", f"`{subj.image}`"),
        ("Rollback target", f"`{subj.previous_image or 'unknown'}`"),
        ("Approvals", f"{len(approvals)}/{run.approvals_required}"
         + (": " + ", ".join(_who(a.user_id, a.user_name) for a in approvals) if approvals else "")
         + (f" — approvers other than the requester; window ends {when(run.expires_at)}"
            if state == RunState.pending_approval and run.expires_at else "")),
        *_timing(state, plan.eta_seconds),
    ]
    body: list[blocks.Block] = [blocks.header(title), blocks.fields(facts)]
    if run.reason:
        body.append(blocks.context(f"Reason: {blocks.user_text(run.reason)}"))
    deploy_steps = [s for s in steps if s.phase == Phase.main.value]
    rollback_steps = [s for s in steps if s.phase == Phase.rollback.value]
    said = run.rollback_reason
    body.append(blocks.section("*Steps*\n" + "\n".join(step_line(s, said=said) for s in deploy_steps)))
    if rollback_steps:
        body.append(blocks.section("*Rollback*\n" + "\n".join(step_line(s, said=said) for s in rollback_steps)))
    if subj.strategy == "canary" and plan.canary is not None:
        c = plan.canary
        checks = ", ".join(f"{k.name} {k.op} {k.threshold:g}{k.unit} fails" for k in plan.checks)
        body.append(blocks.context(
            f"Canary ({c.router}): {' → '.join(f'{w}%' for w in c.steps)}, analysis every "
            f"{c.interval_seconds:g}s × {c.intervals_per_step} per step; roll back after {c.failure_limit} "
            f"failed or {c.inconclusive_limit} inconclusive result(s). Checks: {checks}"))
    if run.rollback_reason:
        body.append(blocks.section(f"*Why it rolled back:* {run.rollback_reason}"))
    if state in FINISHED:
        body.append(blocks.context(_summary(run, approvals)))
    buttons = _buttons(run, state, deploy_steps)
    if buttons:
        body.append(blocks.actions(*buttons, block_id=f"run:{run.id}"))
    if footer and state in (RunState.succeeded, RunState.rolled_back, RunState.failed):
        body.append(blocks.section(footer))
    body.append(blocks.context(f"run `{run.id}` · plan `{run.plan_hash[:12]}`"))
    text = f"{title}: {STATE_TEXT[state]}"
    return Reply(text, blocks.message(*body), ephemeral=False)


def _summary(run: Run, approvals: list[Approval]) -> str:
    start, end = aware(run.started_at), aware(run.finished_at)
    took = describe_duration((end - start).total_seconds()) if start and end else "—"
    approved = ("approved by " + ", ".join(_who(a.user_id, a.user_name) for a in approvals) if approvals
                else "no approval needed" if run.approvals_required == 0 else "not approved")
    text = (f"Summary: requested by {_who(run.requested_by, run.requested_name)}, {approved}, "
            f"took {took}, outcome: {run.outcome or run.state}")
    if run.abort_requested_by and "aborted by" not in (run.rollback_reason or "") + (run.outcome or ""):
        text += f", aborted by <@{run.abort_requested_by}>"
    return text


FINISHED = (RunState.succeeded, RunState.rolled_back, RunState.failed, RunState.aborted, RunState.expired)


def _timing(state: RunState, eta_seconds: int) -> list[tuple[str, str]]:
    """The estimate while the run is to come or under way; once it is over the summary says how long it
    really took, so the estimate goes."""
    return [] if state in FINISHED else [("ETA", describe_duration(eta_seconds))]


def _buttons(run: Run, state: RunState, steps: list[RunStep]) -> list[dict[str, Any]]:
    subj = subject_of(run)
    value = {"run": run.id, "env": run.environment}
    out: list[dict[str, Any]] = []
    if state == RunState.pending_approval:
        # a confirm dialog: an approval starts a change to the environment (issue 6 item 16)
        confirm = (f"Approve {subj.version} → {run.environment}?",
                   f"With the last approval the run starts: {subj.strategy} deploy of `{subj.image}` "
                   f"(rollback target `{subj.previous_image}`).")
        out.append(blocks.button("Approve", ActionId.deploy_approve, encode_value({**value, "h": run.plan_hash[:16]}),
                                 style="primary", confirm=confirm))
    for step in steps:
        if step.kind == "checklist" and step.status == "running":
            out.append(blocks.button(f"Tick: {step.name}"[:75], ActionId.deploy_tick,
                                     encode_value({**value, "step": step.idx})))
    if state in (RunState.pending_approval, RunState.queued, RunState.running) and not run.abort_requested_by:
        abort_confirm: tuple[str, str] | None = None
        if state == RunState.running:
            abort_confirm = ("Abort and roll back?", f"This stops {subj.version} in {run.environment} and rolls "
                             f"back to {subj.previous_image}.")
        out.append(blocks.button("Abort", ActionId.deploy_abort, encode_value(value), style="danger",
                                 confirm=abort_confirm))
    return out


def when(moment: datetime | None) -> str:
    moment = aware(moment)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"
