"""One runs table for every workflow: `deploy_runs` becomes `runs` with a `kind` and a typed `subject`;
step phases become `main`/`rollback`; trading halts.

Existing deploy runs move without loss: their version, image, previous image and strategy go into
`subject` (version 1), `kind` is "deploy", and their steps' phase "deploy" becomes "main".

Revision ID: 0003
Revises: 0002
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
COMMON = ("id", "environment", "dry_run", "reason", "requested_by", "requested_name", "channel", "plan",
          "plan_hash", "approvals_required", "state", "version_no", "abort_requested_by", "created_at",
          "expires_at", "started_at", "finished_at", "outcome", "rollback_reason", "lease_owner", "lease_until",
          "correlation_id")
SUBJECT = ("version", "image", "previous_image", "strategy")
#: the moved columns' types: SQLite hands back strings for untyped DateTime/JSON/Boolean columns
TYPES: dict[str, Any] = {"dry_run": sa.Boolean, "plan": sa.JSON, "subject": sa.JSON, "approvals_required": sa.Integer,
         "version_no": sa.Integer, "created_at": TZ, "expires_at": TZ, "started_at": TZ, "finished_at": TZ,
         "lease_until": TZ}


def _cols(names: tuple[str, ...]) -> list[sa.sql.expression.ColumnClause[Any]]:
    return [sa.column(c, TYPES.get(c, sa.String)) for c in names]


def _runs_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("subject", sa.JSON, nullable=False),
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
        sa.Column("parent_run_id", sa.String(32)),
    ]


def upgrade() -> None:
    runs = op.create_table("runs", *_runs_columns())
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_index("ix_runs_env_created", "runs", ["environment", "created_at"])
    op.create_index("ix_runs_kind", "runs", ["kind"])
    bind = op.get_bind()
    old = sa.table("deploy_runs", *_cols(COMMON + SUBJECT))
    rows = bind.execute(sa.select(old)).mappings().all()
    if rows:
        op.bulk_insert(runs, [
            {**{c: row[c] for c in COMMON}, "kind": "deploy", "parent_run_id": None,
             "subject": {"v": 1, **{c: row[c] for c in SUBJECT}}}
            for row in rows
        ])
    op.execute("UPDATE run_steps SET phase = 'main' WHERE phase = 'deploy'")
    op.drop_index("ix_deploy_runs_env", table_name="deploy_runs")
    op.drop_index("ix_deploy_runs_state", table_name="deploy_runs")
    op.drop_table("deploy_runs")
    op.create_table(
        "trading_halts",
        sa.Column("environment", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("halted_by", sa.String(64), nullable=False),
        sa.Column("halted_by_name", sa.String(128)),
        sa.Column("reason", sa.Text),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("halted_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("trading_halts")
    op.create_table(
        "deploy_runs",
        *[c for c in _runs_columns() if c.name not in ("kind", "subject", "parent_run_id")],
        sa.Column("version", sa.String(64), nullable=False, server_default=""),
        sa.Column("image", sa.String(300), nullable=False, server_default=""),
        sa.Column("previous_image", sa.String(300)),
        sa.Column("strategy", sa.String(16), nullable=False, server_default="rolling"),
    )
    bind = op.get_bind()
    new = sa.table("runs", *_cols(COMMON + ("kind", "subject")))
    rows = bind.execute(sa.select(new).where(new.c.kind == "deploy")).mappings().all()
    if rows:
        target = sa.table("deploy_runs", *_cols(COMMON + SUBJECT))
        bind.execute(target.insert(), [{**{c: row[c] for c in COMMON},
                                        **{c: (row["subject"] or {}).get(c) for c in SUBJECT}} for row in rows])
    op.execute("UPDATE run_steps SET phase = 'deploy' WHERE phase = 'main'")
    op.create_index("ix_deploy_runs_state", "deploy_runs", ["state"])
    op.create_index("ix_deploy_runs_env", "deploy_runs", ["environment"])
    op.drop_index("ix_runs_kind", table_name="runs")
    op.drop_index("ix_runs_env_created", table_name="runs")
    op.drop_index("ix_runs_state", table_name="runs")
    op.drop_table("runs")
