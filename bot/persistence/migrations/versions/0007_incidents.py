"""Incidents, their notes, and tickable checklists (incident checklists, runbook 8.3 after a rollback).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
BIGINT = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "checklists",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("message_key", sa.String(200), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("version_no", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_table(
        "checklist_items",
        sa.Column("checklist_id", sa.String(64), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("text", sa.String(300), nullable=False),
        sa.Column("done_by", sa.String(64)),
        sa.Column("done_by_name", sa.String(128)),
        sa.Column("done_at", TZ),
    )
    op.create_table(
        "incidents",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("severity", sa.Integer, nullable=False),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("channel_name", sa.String(80), nullable=False),
        sa.Column("declared_by", sa.String(64), nullable=False),
        sa.Column("declared_by_name", sa.String(128)),
        sa.Column("declared_at", TZ, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("suspect_run_id", sa.String(32)),
        sa.Column("alert_group_id", sa.String(200)),
        sa.Column("alert_link", sa.Text),
        sa.Column("resolved_at", TZ),
        sa.Column("resolved_by", sa.String(64)),
        sa.Column("resolved_by_name", sa.String(128)),
        sa.Column("resolution", sa.Text),
        sa.Column("correlation_id", sa.String(64), nullable=False),
    )
    op.create_index("ix_incidents_env_declared", "incidents", ["environment", "declared_at"])
    op.create_index("ix_incidents_status", "incidents", ["status"])
    op.create_table(
        "incident_notes",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("incident_id", BIGINT, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("author_id", sa.String(64), nullable=False),
        sa.Column("author_name", sa.String(128)),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_incident_notes_incident", "incident_notes", ["incident_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_incident_notes_incident", table_name="incident_notes")
    op.drop_table("incident_notes")
    op.drop_index("ix_incidents_status", table_name="incidents")
    op.drop_index("ix_incidents_env_declared", table_name="incidents")
    op.drop_table("incidents")
    op.drop_table("checklist_items")
    op.drop_table("checklists")
