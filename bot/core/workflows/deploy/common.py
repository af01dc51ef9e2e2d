"""What the deploy step handlers share: the typed plan of the step's run, waiting for a rollout, the
analysis variables and the image effect."""

from __future__ import annotations

from bot.core.ports import WorkloadRef
from bot.core.runs.context import StepContext, StepFailed
from bot.core.workflows.deploy.model import DeployPlan

POLL = 0.5
#: labels on the canary's pods; the default analysis queries select `version="canary"`
CANARY_LABELS = {"version": "canary", "track": "canary"}


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters at a word boundary, with an ellipsis when it was cut."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ·—,;(") + "…"


def plan(ctx: StepContext) -> DeployPlan:
    """The run's typed plan (the deploy workflows hand handlers a `DeployPlan`)."""
    if not isinstance(ctx.plan, DeployPlan):
        raise TypeError(f"a deploy step got a {type(ctx.plan).__name__} plan")
    return ctx.plan


def variables(ctx: StepContext) -> dict[str, str]:
    """The analysis queries' placeholders."""
    p = plan(ctx)
    t = p.target
    return {"namespace": t.namespace, "deployment": t.deployment, "canary": f"{t.deployment}-canary",
            "version": p.version}


def record_image(ctx: StepContext, before: str, after: str) -> None:
    t = plan(ctx).target
    ctx.effect(f"image:{t.namespace}/{t.deployment}", f"{t.deployment} image", before, after)


def wait_rollout(ctx: StepContext, ref: WorkloadRef, what: str) -> None:
    timeout = plan(ctx).rollout_timeout
    waited = 0.0
    while True:
        status = ctx.backends.cluster.rollout_status(ref)
        if status.complete:
            return
        if status.failed:
            raise StepFailed(f"{what}: rollout failed — {status.message or 'progress deadline exceeded'}")
        if waited > timeout:
            raise StepFailed(f"{what}: rollout not complete after {timeout:.0f}s "
                             f"({status.available}/{status.desired} available)")
        ctx.wait(POLL)
        waited += POLL
