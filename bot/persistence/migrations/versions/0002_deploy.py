"""Deploy runs, their steps, approvals and per-environment locks.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deploy_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("image", sa.String(300), nullable=False),
        sa.Column("previous_image", sa.String(300)),
        sa.Column("strategy", sa.String(16), nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("requested_name", sa.String(128)),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("plan", sa.JSON, nullable=False),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("approvals_required", sa.Integer, nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("version_no", sa.Integer, nullable=False),
        sa.Column("abort_requested_by", sa.String(64)),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ),
        sa.Column("started_at", TZ),
        sa.Column("finished_at", TZ),
        sa.Column("outcome", sa.Text),
        sa.Column("rollback_reason", sa.Text),
        sa.Column("lease_owner", sa.String(100)),
        sa.Column("lease_until", TZ),
        sa.Column("correlation_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_deploy_runs_state", "deploy_runs", ["state"])
    op.create_index("ix_deploy_runs_env", "deploy_runs", ["environment"])
    op.create_table(
        "run_steps",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("phase", sa.String(16), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TZ),
        sa.Column("finished_at", TZ),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_table(
        "approvals",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("user_name", sa.String(128)),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "env_locks",
        sa.Column("environment", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(32)),
        sa.Column("held_by", sa.String(64), nullable=False),
        sa.Column("held_by_name", sa.String(128)),
        sa.Column("reason", sa.Text),
        sa.Column("acquired_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("env_locks")
    op.drop_table("approvals")
    op.drop_table("run_steps")
    op.drop_index("ix_deploy_runs_env", table_name="deploy_runs")
    op.drop_index("ix_deploy_runs_state", table_name="deploy_runs")
    op.drop_table("deploy_runs")
