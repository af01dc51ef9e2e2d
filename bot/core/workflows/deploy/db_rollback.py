"""`/rollback` options: the database rollback Job (`--with-db`, runbook 8.2 step 3) and the immediate
rollback of a deploy that ended a moment ago (`immediate_rollback_window_seconds`).

The database rollback runs the environment's `db_rollback` Job (a batch/v1 manifest in the config) after
the application is rolled back and before it is verified, as the runbook orders it. The manifest, with
`{version}` (the version rolled back to), `{from_version}` (the one rolled back from), `{image}` and `{run}`
filled in, is part of the plan — so an approval covers exactly that Job. `--with-db` needs the admin
role and at least one approval, whatever the environment's rollback approvals say, and never runs at once.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.config import Environment, StepSettings
from bot.core.runs.context import StepContext, StepFailed, describe_duration
from bot.core.runs.states import FINISHED
from bot.core.runs.workflow import Handler
from bot.core.workflows.deploy import common
from bot.errors import CommandError
from bot.persistence.models import Run
from bot.timeutil import aware, utcnow

KIND = "db_rollback"
PLAN_KEY = "db_rollback"
POLL = 1.0


def procedure_step(env: Environment) -> StepSettings:
    """The step `rollback_procedure` adds after the application's rollback when `--with-db` is given."""
    job = env.db_rollback
    return StepSettings.model_validate({"kind": KIND, "name": "Roll the database back (runbook 8.2 step 3)",
                                        "timeout_seconds": job.timeout_seconds if job else None})


def plan_extra(env_name: str, env: Environment, *, version: str, from_image: str) -> dict[str, Any]:
    """What the plan carries for the Job (hashed with the rest of the plan). Raises `CommandError` when
    the environment configures no database rollback."""
    job = env.db_rollback
    if job is None:
        raise CommandError(f"{env_name} has no database rollback configured",
                           hint="Add `db_rollback:` (a Job manifest) to the environment, or roll back without "
                                "`--with-db`.")
    from_version = from_image.rsplit(":", 1)[1] if ":" in from_image else from_image
    return {PLAN_KEY: {"name": job.name, "template": job.template, "timeout": job.timeout_seconds,
                       "from_version": from_version}}


def _fill(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, sub in variables.items():
            value = value.replace("{" + key + "}", sub)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, variables) for v in value]
    return value


def manifest_of(run_id: str, plan: dict[str, Any]) -> dict[str, Any]:
    """The Job as it is created: `<run id>-<job name>`, labelled with the run."""
    job = plan[PLAN_KEY]
    name = re.sub(r"[^a-z0-9-]", "-", f"{run_id}-{job['name']}".lower())[:63].strip("-")
    variables = {"version": plan["version"], "from_version": job["from_version"], "image": plan["image"],
                 "run": run_id}
    manifest: dict[str, Any] = _fill(copy.deepcopy(job["template"]), variables)
    manifest.setdefault("apiVersion", "batch/v1")
    manifest.setdefault("kind", "Job")
    manifest.setdefault("metadata", {})["name"] = name
    manifest["metadata"].setdefault("labels", {}).update({"swarm-chatops/run": run_id,
                                                          "swarm-chatops/purpose": "db-rollback"})
    return manifest


def db_rollback(ctx: StepContext) -> str | None:
    """Create the database rollback Job once, then follow it until it succeeds or fails."""
    typed = common.plan(ctx)
    ns = typed.target.namespace
    manifest = manifest_of(ctx.run_id, typed.to_json())  # its PLAN_KEY part is kept in the plan's `extra`
    name = manifest["metadata"]["name"]
    cluster = ctx.backends.cluster
    if not ctx.data.get("created"):
        cluster.create_job(ns, manifest)  # AlreadyExists (a resumed step) is taken as created
        ctx.audit("kubernetes.job.create", "ok", job=name, purpose="db-rollback")
        ctx.save(created=True, job=name)
    while True:
        status = cluster.job_status(ns, name)
        if status.succeeded:
            ctx.audit("kubernetes.job.succeeded", "ok", job=name, purpose="db-rollback")
            return f"database rolled back: job {name} succeeded"
        if status.failed:
            tail = cluster.job_log_tail(ns, name)
            ctx.note(f":x: Database rollback Job `{name}` failed: {status.message}\n```{tail[-2500:]}```")
            ctx.audit("kubernetes.job.failed", "failed", job=name, purpose="db-rollback", message=status.message)
            raise StepFailed(f"database rollback job {name} failed: {status.message or 'see the log in the thread'}")
        ctx.wait(POLL)


HANDLERS: dict[str, Handler] = {KIND: db_rollback}


# --- the immediate rollback -----------------------------------------------------------------------------------
def immediate_reason(session: Session, env_name: str, env: Environment) -> str | None:
    """Why a rollback may run without approval now, or None: the environment's newest deploy ended
    (failed, rolled back or succeeded) within `immediate_rollback_window_seconds`."""
    window = env.immediate_rollback_window_seconds
    if not window:
        return None
    last = session.execute(select(Run).where(Run.environment == env_name, Run.kind == "deploy",
                                             Run.state.in_([s.value for s in FINISHED]),
                                             Run.finished_at.is_not(None))
                           .order_by(Run.finished_at.desc()).limit(1)).scalars().first()
    if last is None or last.state in ("aborted", "expired"):
        return None
    ago = (utcnow() - aware(last.finished_at)).total_seconds()  # type: ignore[operator]
    if ago > window:
        return None
    return (f"deploy `{last.id}` ended {last.state.replace('_', ' ')} {describe_duration(ago)} ago, within the "
            f"{describe_duration(window)} immediate-rollback window")


__all__ = ["HANDLERS", "immediate_reason", "plan_extra", "procedure_step"]
