"""Issue 9: hotline tickets with their history, departments, grids, the knowledge base (with a
full-text index over segmented Chinese text), the phone-read audit and shared keys.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("called_number", sa.String(16), nullable=True),
        sa.Column("line", sa.String(16), nullable=True),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("urgency", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("address", sa.String(500), nullable=False),
        sa.Column("lat", sa.Float, nullable=True),
        sa.Column("lon", sa.Float, nullable=True),
        sa.Column("grid_id", sa.String(64), nullable=True),
        sa.Column("street", sa.String(200), nullable=True),
        sa.Column("department_id", sa.String(64), nullable=True),
        sa.Column("incident_id", sa.String(32), nullable=True),
        sa.Column("camera_ids", sa.JSON, nullable=False),
        sa.Column("response_deadline_ms", sa.BigInteger, nullable=True),
        sa.Column("deadline_ms", sa.BigInteger, nullable=False),
        sa.Column("caller_name", sa.String(100), nullable=False),
        sa.Column("caller_phone", sa.String(32), nullable=False),
        sa.Column("satisfaction", sa.String(24), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("dispatched_at_ms", sa.BigInteger, nullable=True),
        sa.Column("accepted_at_ms", sa.BigInteger, nullable=True),
        sa.Column("replied_at_ms", sa.BigInteger, nullable=True),
        sa.Column("callback_at_ms", sa.BigInteger, nullable=True),
        sa.Column("closed_at_ms", sa.BigInteger, nullable=True),
        sa.Column("reply_text", sa.Text, nullable=False),
        sa.Column("close_text", sa.Text, nullable=False),
        sa.Column("returns", sa.Integer, nullable=False),
        sa.Column("coordination", sa.Boolean, nullable=False),
        sa.Column("coordinated", sa.Boolean, nullable=False),
        sa.Column("supervised", sa.Boolean, nullable=False),
        sa.Column("overdue", sa.Boolean, nullable=False),
        sa.Column("reminders", sa.Integer, nullable=False),
        sa.Column("extension_requested_days", sa.Integer, nullable=True),
        sa.Column("extension_reason", sa.Text, nullable=False),
        sa.Column("extensions", sa.Integer, nullable=False),
        sa.Column("source", sa.String(100), nullable=False),
        sa.Column("route_note", sa.String(300), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("reminded_for_ms", sa.BigInteger, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("number", name="uq_tickets_number"),
        sa.UniqueConstraint("incident_id", name="uq_tickets_incident_id"),
    )
    op.create_index("ix_tickets_created", "tickets", ["created_at_ms"])
    op.create_index("ix_tickets_status_created", "tickets", ["status", "created_at_ms"])
    # Covering the KPIs' columns (hotline/adapters/tickets_sql.py says why).
    op.create_index(
        "ix_tickets_department_created",
        "tickets",
        [
            "department_id",
            "created_at_ms",
            "status",
            "closed_at_ms",
            "deadline_ms",
            "replied_at_ms",
            "callback_at_ms",
            "satisfaction",
        ],
    )
    op.create_index("ix_tickets_deadline", "tickets", ["deadline_ms"])
    op.create_table(
        "ticket_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ticket_id", sa.String(32), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("dedup", sa.String(200), nullable=True),
        sa.UniqueConstraint("dedup", name="uq_ticket_history_dedup"),
    )
    op.create_index("ix_ticket_history_ticket_id", "ticket_history", ["ticket_id"])
    op.create_table(
        "ticket_numbers",
        sa.Column("day", sa.String(8), primary_key=True),
        sa.Column("last", sa.Integer, nullable=False),
    )
    op.create_table(
        "departments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("categories", sa.JSON, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "city_docs",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "knowledge",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("department_id", sa.String(64), nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("search", sa.Text, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    if op.get_bind().dialect.name == "sqlite":
        # The segmented text, one space-separated word per token (unicode61 splits on spaces).
        op.execute("CREATE VIRTUAL TABLE knowledge_fts USING fts5(search, tokenize='unicode61')")
    else:
        op.execute("CREATE INDEX ix_knowledge_search ON knowledge USING gin (to_tsvector('simple', search))")
    op.create_table(
        "phone_reads",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ticket_id", sa.String(32), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(100), nullable=False),
    )
    op.create_index("ix_phone_reads_ticket_id", "phone_reads", ["ticket_id"])
    op.create_table(
        "app_secrets",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE knowledge_fts")
    for table in ("app_secrets", "phone_reads", "knowledge", "city_docs", "departments", "ticket_numbers"):
        op.drop_table(table)
    op.drop_table("ticket_history")
    op.drop_table("tickets")
