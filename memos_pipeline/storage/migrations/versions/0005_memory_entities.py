"""memory_entities: the entities each memory mentions, for graph recall (FAST_GRAPH)

Revision ID: 0005
Revises: 0004

One row per (memory, entity), written at index time without an LLM (``memos_pipeline.search.graph``). Per user it is the
entity -> document-frequency table that weighs shared entities by rarity, and the way to find a new memory's
neighbours; the resulting edges go to ``memory_edges`` (kind ``entity``). Rows go with their memory (CASCADE).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "memory_entities",
        sa.Column("memory_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("entity", sa.Text(), nullable=False),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", sa.String(length=256), nullable=False),
        sa.ForeignKeyConstraint(
            ["memory_id"], ["memories.id"], name=op.f("fk_memory_entities_memory_id_memories"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("memory_id", "entity", name=op.f("pk_memory_entities")),
    )
    # Document frequency and neighbour lookups are per (tenant, user, entity).
    op.create_index("ix_memory_entities_scope", "memory_entities", ["tenant_id", "user_id", "entity"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_memory_entities_scope", table_name="memory_entities")
    op.drop_table("memory_entities")
