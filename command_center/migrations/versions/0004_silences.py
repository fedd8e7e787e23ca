"""Issue 7: silences (maintenance windows) by device, grid or rule.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "silences",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("device_ids", sa.JSON, nullable=False),
        sa.Column("grid_ids", sa.JSON, nullable=False),
        sa.Column("rule_ids", sa.JSON, nullable=False),
        sa.Column("starts_at_ms", sa.BigInteger, nullable=False),
        sa.Column("ends_at_ms", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_silences_ends_at_ms", "silences", ["ends_at_ms"])


def downgrade() -> None:
    op.drop_table("silences")
