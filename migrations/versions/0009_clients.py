"""clients own API keys and every row they create; message ids are unique per client

Each existing key becomes its own client (named after the key) and the rows it made
(files, voice tasks) follow it; rows with no recorded key stay unowned, visible to the
admin credential only. Existing messages keep their id as the client's id.

Revision ID: 0009_clients
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_clients"
down_revision = "0008"
branch_labels = None
depends_on = None

#: Every table whose rows a client creates.
OWNED = ("uploads", "scan_jobs", "voice_tasks", "messages", "dead_letters", "files",
         "tenants", "leads", "campaigns", "call_requests")


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clients")),
    )
    op.create_index(op.f("ix_clients_name"), "clients", ["name"], unique=False)
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("client_id", sa.Integer(), nullable=True))

    conn = op.get_bind()
    keys = conn.execute(sa.text("SELECT id, name, created_at FROM api_keys ORDER BY id")).all()
    taken: set[str] = set()
    for key_id, name, created_at in keys:
        client_name = name if name not in taken else f"{name} #{key_id}"
        taken.add(client_name)
        conn.execute(sa.text("INSERT INTO clients (name, created_at) VALUES (:n, :c)"),
                     {"n": client_name, "c": created_at})
        client_id = conn.execute(sa.text("SELECT max(id) FROM clients WHERE name = :n"), {"n": client_name}).scalar_one()
        conn.execute(sa.text("UPDATE api_keys SET client_id = :c WHERE id = :k"), {"c": client_id, "k": key_id})

    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.alter_column("client_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index(batch_op.f("ix_api_keys_client_id"), ["client_id"], unique=False)
        batch_op.create_foreign_key(batch_op.f("fk_api_keys_client_id_clients"), "clients", ["client_id"], ["id"])

    for table in OWNED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("client_id", sa.Integer(), nullable=True))
            if table == "messages":
                batch_op.add_column(sa.Column("client_ref", sa.String(length=64), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{table}_client_id"), ["client_id"], unique=False)
            batch_op.create_foreign_key(batch_op.f(f"fk_{table}_client_id_clients"), "clients", ["client_id"], ["id"])

    for table in ("files", "voice_tasks"):  # the two families that recorded the key
        conn.execute(sa.text(
            f"UPDATE {table} SET client_id = (SELECT client_id FROM api_keys WHERE api_keys.id = {table}.api_key_id)"
            f" WHERE api_key_id IS NOT NULL"
        ))
    conn.execute(sa.text("UPDATE messages SET client_ref = id"))
    with op.batch_alter_table("messages") as batch_op:
        batch_op.create_unique_constraint(batch_op.f("uq_messages_client_id"), ["client_id", "client_ref"])


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_messages_client_id"), type_="unique")
    for table in reversed(OWNED):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(batch_op.f(f"fk_{table}_client_id_clients"), type_="foreignkey")
            batch_op.drop_index(batch_op.f(f"ix_{table}_client_id"))
            if table == "messages":
                batch_op.drop_column("client_ref")
            batch_op.drop_column("client_id")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_api_keys_client_id_clients"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_api_keys_client_id"))
        batch_op.drop_column("client_id")
    op.drop_index(op.f("ix_clients_name"), table_name="clients")
    op.drop_table("clients")
