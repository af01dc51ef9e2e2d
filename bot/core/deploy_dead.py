"""When a deploy plan's post dies in the outbox: cancel the run and tell the requester (Slack-free).

`DeployService.request` enqueues the plan's post with `retry_until` = the end of the approval
window and `on_dead=PLAN_DEAD, ref=<run id>`. If Slack refuses the post for good (the bot is not in
the deploy channel, the channel does not exist) or is still failing when the window ends, nobody can
ever see the plan's buttons, so waiting for approvals would only hold the environment's lock. The
outbox worker then runs `on_plan_dead` in the transaction that marks the row dead:

* a run still `pending_approval` or `queued` is cancelled the way an abort before execution is
  (state `aborted`, the lock released, `deploy.cancel` audited), by the bot rather than a person;
* a run already past that (it started, or the executor expired it) is left alone;
* either way the requester gets a direct message saying what happened and what to do.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from bot.core import locks
from bot.core.model import Reply
from bot.core.runs.states import RunState
from bot.core.workflows.deploy.plan import subject_of
from bot.core.workflows.deploy.service import DeployService
from bot.outbox import DeadHook, DeadLetter, Outbox
from bot.timeutil import utcnow

PLAN_DEAD = "deploy.plan_dead"
CANCELLABLE = (RunState.pending_approval, RunState.queued)


def install(outbox: Outbox, service: DeployService) -> None:
    """Register the plan's dead-letter hook (the container calls this once)."""
    outbox.on_dead(PLAN_DEAD, plan_dead_hook(service))


def plan_dead_hook(service: DeployService) -> DeadHook:
    def on_plan_dead(session: Session, dead: DeadLetter) -> None:
        if not dead.ref:
            raise ValueError(f"outbox row {dead.row_id}: a plan post without a run id")
        run = service.store.load(session, dead.ref)  # FOR UPDATE: serialises with clicks and the executor
        state = RunState(run.state)
        why = (f"Slack refused it ({dead.error})" if dead.reason == "permanent"
               else f"Slack did not accept it before the approval window ended ({dead.error})")
        hint = (f" Make sure the bot is a member of <#{run.channel}> (`/invite @swarm-chatops`), then request "
                "the deploy again." if dead.reason == "permanent" else " Request the deploy again once Slack works.")
        what = "deploy" if run.kind == "deploy" else run.kind.replace("_", " ")
        subject = f"your {what} of {subject_of(run).version} → {run.environment} (run `{run.id}`)"
        if state in CANCELLABLE:
            service.transition(session, run, RunState.aborted)
            run.finished_at = utcnow()
            run.outcome = f"cancelled by the bot: the plan could not be posted in <#{run.channel}>"
            locks.release(session, run.environment, run_id=run.id)
            service.audit(session, run, None, "deploy.cancel", "aborted", state_before=state.value,
                          cause="plan_post_dead", reason=dead.reason, error=dead.error)
            text = (f":warning: I cancelled {subject}: its plan could not be posted in <#{run.channel}> — {why}. "
                    f"Nothing was changed and `{run.environment}` is unlocked.{hint}")
        else:
            text = (f":warning: The plan of {subject} could not be posted in <#{run.channel}> — {why}. "
                    f"The run is {state.value}; `/swarm-status` shows it.")
        # a direct message: the deploy channel is exactly what just failed
        service.outbox.post(session, run.requested_by, Reply(text, ephemeral=False))

    return on_plan_dead
