"""tenants, leads, campaigns and calls get opaque public ids for URLs and request bodies

Revision ID: 0011_public_ids
Revises: 0010_ocr_attempts_retention
Create Date: 2026-12-03
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0011_public_ids"
down_revision = "0010_ocr_attempts_retention"
branch_labels = None
depends_on = None

TABLES = ("tenants", "leads", "campaigns", "call_requests")


def upgrade() -> None:
    conn = op.get_bind()
    for table in TABLES:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("public_id", sa.String(length=32), nullable=True))
        for (row_id,) in conn.execute(sa.text(f"SELECT id FROM {table}")).all():
            conn.execute(sa.text(f"UPDATE {table} SET public_id = :p WHERE id = :i"),
                         {"p": uuid.uuid4().hex, "i": row_id})
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column("public_id", existing_type=sa.String(length=32), nullable=False)
            batch_op.create_unique_constraint(batch_op.f(f"uq_{table}_public_id"), ["public_id"])


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(batch_op.f(f"uq_{table}_public_id"), type_="unique")
            batch_op.drop_column("public_id")
