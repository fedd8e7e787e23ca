"""Issue 8: the camera catalog, and each camera's changes of status (for availability).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cameras",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("department", sa.String(100), nullable=False),
        sa.Column("lat", sa.Float, nullable=False),
        sa.Column("lon", sa.Float, nullable=False),
        sa.Column("stream_url", sa.Text, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("last_checked_ms", sa.BigInteger, nullable=True),
        sa.Column("status_since_ms", sa.BigInteger, nullable=True),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("search", sa.Text, nullable=False),
    )
    op.create_index("ix_cameras_department", "cameras", ["department"])
    op.create_index("ix_cameras_status", "cameras", ["status"])
    op.create_table(
        "camera_checks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("camera_id", sa.String(64), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
    )
    op.create_index("ix_camera_checks_camera_at", "camera_checks", ["camera_id", "at_ms"])


def downgrade() -> None:
    op.drop_table("camera_checks")
    op.drop_table("cameras")
