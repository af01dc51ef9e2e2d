"""Audit indexes for `/audit` at a million records, and the readiness heartbeat row.

`/audit` pages newest first (`ORDER BY seq DESC LIMIT n`) under a filter. On PostgreSQL a
single-column index on `actor_id` or `environment` cannot give that order, so a page of a common
value became a sort of every matching row; `(column, seq)` indexes walk straight to the newest
matches; `(ts, seq)` lets a time range be paged from the index alone (`audit.page` picks the seqs
first, then reads those rows). SQLite's indexes already end in the rowid (= `seq`), but the same
definitions serve both. `action` gets one too, for `--action PREFIX`. `db_heartbeat` is the row
`/readyz` writes to prove the database accepts writes.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_audit_ts", table_name="audit_log")
    op.drop_index("ix_audit_actor", table_name="audit_log")
    op.drop_index("ix_audit_env", table_name="audit_log")
    op.create_index("ix_audit_ts_seq", "audit_log", ["ts", "seq"])
    op.create_index("ix_audit_actor_seq", "audit_log", ["actor_id", "seq"])
    op.create_index("ix_audit_env_seq", "audit_log", ["environment", "seq"])
    op.create_index("ix_audit_action_seq", "audit_log", ["action", "seq"])
    op.create_table(
        "db_heartbeat",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_by", sa.String(100), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("db_heartbeat")
    op.drop_index("ix_audit_action_seq", table_name="audit_log")
    op.drop_index("ix_audit_env_seq", table_name="audit_log")
    op.drop_index("ix_audit_actor_seq", table_name="audit_log")
    op.drop_index("ix_audit_ts_seq", table_name="audit_log")
    op.create_index("ix_audit_env", "audit_log", ["environment"])
    op.create_index("ix_audit_actor", "audit_log", ["actor_id"])
    op.create_index("ix_audit_ts", "audit_log", ["ts"])
