"""Alert intake: `alert_groups` (one root message per group, channel and episode) and `alert_instances`.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_groups",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("group_hash", sa.String(64), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("environment", sa.String(64)),
        sa.Column("receiver", sa.String(500), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("mention", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text()),
        sa.Column("group_labels", sa.JSON(), nullable=False),
        sa.Column("common_labels", sa.JSON(), nullable=False),
        sa.Column("common_annotations", sa.JSON(), nullable=False),
        sa.Column("external_url", sa.Text()),
        sa.Column("generator_url", sa.Text()),
        sa.Column("firing_count", sa.Integer(), nullable=False),
        sa.Column("resolved_count", sa.Integer(), nullable=False),
        sa.Column("opened_at", _TS, nullable=False),
        sa.Column("resolved_at", _TS),
        sa.Column("reopened", sa.Integer(), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("message_key", sa.String(200), nullable=False),
        sa.Column("acked_by", sa.String(64)),
        sa.Column("acked_by_name", sa.String(128)),
        sa.Column("acked_at", _TS),
        sa.Column("silence_id", sa.String(64)),
        sa.Column("silenced_by", sa.String(64)),
        sa.Column("silenced_until", _TS),
        sa.Column("version_no", sa.Integer(), nullable=False),
        sa.UniqueConstraint("group_hash", "channel", "episode", name="uq_alert_groups_episode"),
    )
    op.create_index("ix_alert_groups_env_status", "alert_groups", ["environment", "status"])
    op.create_table(
        "alert_instances",
        sa.Column("group_id", _ID, primary_key=True),
        sa.Column("fingerprint", sa.String(64), primary_key=True),
        sa.Column("alertname", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("starts_at", _TS, nullable=False),
        sa.Column("ends_at", _TS),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.JSON(), nullable=False),
        sa.Column("generator_url", sa.Text()),
        sa.Column("updated_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_instances")
    op.drop_index("ix_alert_groups_env_status", table_name="alert_groups")
    op.drop_table("alert_groups")
