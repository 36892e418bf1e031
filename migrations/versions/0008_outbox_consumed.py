"""outbox events record when a worker first took their task

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("consumed_at", sa.DateTime(timezone=True), nullable=True))
    # The redelivery scan: published events no worker has taken yet.
    op.create_index("ix_outbox_events_unconsumed", "outbox_events", ["published_at", "id"], unique=False,
                    postgresql_where=sa.text("published_at IS NOT NULL AND consumed_at IS NULL"),
                    sqlite_where=sa.text("published_at IS NOT NULL AND consumed_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_outbox_events_unconsumed", table_name="outbox_events",
                  postgresql_where=sa.text("published_at IS NOT NULL AND consumed_at IS NULL"),
                  sqlite_where=sa.text("published_at IS NOT NULL AND consumed_at IS NULL"))
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_column("consumed_at")
