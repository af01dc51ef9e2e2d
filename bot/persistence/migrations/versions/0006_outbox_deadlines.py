"""Outbox deadlines and dead-letter hooks: `retry_until`, `on_dead`, `ref`.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable additions: plain ALTER TABLE on both SQLite and PostgreSQL; existing rows keep NULL,
    # which the worker reads as "created_at + the default reply deadline"
    op.add_column("outbox", sa.Column("retry_until", sa.DateTime(timezone=True)))
    op.add_column("outbox", sa.Column("on_dead", sa.String(64)))
    op.add_column("outbox", sa.Column("ref", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("ref")
        batch.drop_column("on_dead")
        batch.drop_column("retry_until")
