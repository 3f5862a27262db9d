"""embedding_models: which model the vector columns hold; embedding columns nullable (reembed swaps columns)

Revision ID: 0004
Revises: 0003

No row is seeded: a database without one is on MEMOS_EMBEDDER, as before (the first reembed records it).
Dropping NOT NULL is a catalog change only. After a reembed the column is one that was added as nullable (adding
it NOT NULL would rewrite the table); the reembed's count check, not the constraint, guarantees it is full.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("memories", "preferences")


def upgrade() -> None:
    op.create_table(
        "embedding_models",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_embedding_models")),
    )
    op.create_index(
        "uq_embedding_models_status",
        "embedding_models",
        ["status"],
        unique=True,
        postgresql_where=sa.text("status IN ('active', 'building', 'previous')"),
    )
    for table in TABLES:
        op.alter_column(table, "embedding", nullable=True)


def downgrade() -> None:
    # The columns a reembed leaves behind go too; a database re-embedded to another width cannot go back to the
    # 384-wide schema of 0003 this way (reembed back to the local model first).
    for table in TABLES:
        op.execute(f"DROP INDEX IF EXISTS ix_{table}_embedding_next_hnsw")
        op.execute(f"DROP INDEX IF EXISTS ix_{table}_embedding_todo")
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS embedding_next")
        op.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS embedding_prev")
        op.alter_column(table, "embedding", nullable=False)
    op.drop_index("uq_embedding_models_status", table_name="embedding_models")
    op.drop_table("embedding_models")
