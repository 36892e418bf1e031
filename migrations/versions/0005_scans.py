"""url scans

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# BIGINT on PostgreSQL, INTEGER (rowid alias) on SQLite, as app.models.outbox.BigId.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "scan_jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_jobs")),
    )
    with op.batch_alter_table("scan_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scan_jobs_created_at"), ["created_at"], unique=False)
        batch_op.create_index("ix_scan_jobs_state_created", ["state", "created_at"], unique=False)

    op.create_table(
        "scan_results",
        sa.Column("id", BigId, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("final_url", sa.Text(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("fetch", sa.JSON(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("risk", sa.String(length=16), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("container_seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["scan_jobs.id"], name=op.f("fk_scan_results_job_id_scan_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_results")),
        sa.UniqueConstraint("job_id", name=op.f("uq_scan_results_job_id")),
    )

    op.create_table(
        "scan_audit",
        sa.Column("id", BigId, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["scan_jobs.id"], name=op.f("fk_scan_audit_job_id_scan_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_audit")),
    )
    with op.batch_alter_table("scan_audit", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scan_audit_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("scan_audit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scan_audit_job_id"))
    op.drop_table("scan_audit")
    op.drop_table("scan_results")
    with op.batch_alter_table("scan_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_scan_jobs_state_created")
        batch_op.drop_index(batch_op.f("ix_scan_jobs_created_at"))
    op.drop_table("scan_jobs")
