"""Issue 5: tokens get an id, a department, an expiry and revocation; dead letters count their
refused items by reason, and exact counts outlive the letters' retention.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("department_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("expires_at_ms", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("revoked_at_ms", sa.BigInteger, nullable=True))
    # Tokens issued before had no public id: give each one (the token itself stays valid).
    digests = [row[0] for row in conn.execute(sa.text("SELECT digest FROM api_tokens"))]
    for digest in digests:
        conn.execute(
            sa.text("UPDATE api_tokens SET id = :id WHERE digest = :digest"),
            {"id": secrets.token_hex(8), "digest": digest},
        )
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("id", existing_type=sa.String(32), nullable=False)
        batch.create_unique_constraint("uq_api_tokens_id", ["id"])

    with op.batch_alter_table("dead_letters") as batch:
        batch.add_column(sa.Column("refused_items", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("reasons", sa.JSON, nullable=True))
    # Each old letter was one refused item for its reason.
    as_object = "json_build_object(reason, 1)" if conn.dialect.name == "postgresql" else "json_object(reason, 1)"
    conn.execute(sa.text(f"UPDATE dead_letters SET reasons = {as_object}"))
    with op.batch_alter_table("dead_letters") as batch:
        batch.alter_column("reasons", existing_type=sa.JSON, nullable=False)

    op.create_table(
        "dead_letter_counts",
        sa.Column("reason", sa.String(32), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    conn.execute(
        sa.text(
            "INSERT INTO dead_letter_counts (reason, count) SELECT reason, COUNT(*) FROM dead_letters GROUP BY reason"
        )
    )


def downgrade() -> None:
    op.drop_table("dead_letter_counts")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("reasons")
        batch.drop_column("refused_items")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint("uq_api_tokens_id", type_="unique")
        batch.drop_column("revoked_at_ms")
        batch.drop_column("expires_at_ms")
        batch.drop_column("department_id")
        batch.drop_column("id")
