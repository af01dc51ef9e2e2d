"""Pending commands: a delivery acknowledged to Slack but not yet run, so a restart can run it.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pending_commands",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("claimed_by", sa.String(100)),
        sa.Column("claimed_until", TZ),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_pending_commands_claimed_until", "pending_commands", ["claimed_until"])


def downgrade() -> None:
    op.drop_index("ix_pending_commands_claimed_until", table_name="pending_commands")
    op.drop_table("pending_commands")
