"""ingests.content_key (retried adds are one ingest) and memories.origin_ingest_id (a version's first add)

Revision ID: 0006
Revises: 0005

``content_key``: a hash of (user, conversation, messages) of every add. A client that re-sends the same add (the
MemOS client does, at once, after any failure to parse our answer) gets the first add's ingest back when one with
the same key was accepted within MEMOS_ADD_DEDUP_WINDOW_S; the lookup is per tenant and by time, hence the index.

``origin_ingest_id``: a new version of a memory (an update, a merge) has no ingest of its own (``ingest_id`` names
the add whose chunking or extraction wrote the row), yet it still belongs to that add's agent, app and ``info``:
filters and deletes by agent read them through this column. Existing versions are back-filled along their
merged_from edges.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ingests", sa.Column("content_key", sa.String(length=64), nullable=True))
    op.create_index("ix_ingests_tenant_content_key", "ingests", ["tenant_id", "content_key", "created_at"])
    op.add_column("memories", sa.Column("origin_ingest_id", postgresql.UUID(as_uuid=True), nullable=True))
    # One step of the version chain per statement (new version -> merged_from -> old version), until no row
    # changes: chains are short (one step per update or merge).
    conn = op.get_bind()
    while True:
        done = conn.execute(
            sa.text(
                "UPDATE memories m SET origin_ingest_id = COALESCE(o.ingest_id, o.origin_ingest_id) "
                "FROM memory_edges e JOIN memories o ON o.id = e.dst_id "
                "WHERE e.src_id = m.id AND e.kind = 'merged_from' AND m.ingest_id IS NULL "
                "AND m.origin_ingest_id IS NULL AND COALESCE(o.ingest_id, o.origin_ingest_id) IS NOT NULL"
            )
        ).rowcount
        if not done:
            break


def downgrade() -> None:
    op.drop_column("memories", "origin_ingest_id")
    op.drop_index("ix_ingests_tenant_content_key", table_name="ingests")
    op.drop_column("ingests", "content_key")
