"""knowledge bases and their files (issue 11)

Revision ID: 0008
Revises: 0007

``knowledgebases``: a tenant's bases. ``knowledgebase_files``: each uploaded file with its bytes as received (the
upload is durable once this row, its ingest and its outbox row commit together) and the ingest that processes it
(stages ``document`` and ``indexer``). The passages themselves are ordinary ``memories`` rows of kind ``document``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _uuid_pk() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()"))


def _time(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "knowledgebases",
        _uuid_pk(),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_knowledgebases_tenant_id_tenants", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_knowledgebases"),
    )
    op.create_index("ix_knowledgebases_tenant", "knowledgebases", ["tenant_id", "status", "created_at"])
    op.create_table(
        "knowledgebase_files",
        _uuid_pk(),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("knowledgebase_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("ingest_id", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("content_type", sa.String(length=128), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        sa.ForeignKeyConstraint(
            ["knowledgebase_id"],
            ["knowledgebases.id"],
            name="fk_knowledgebase_files_knowledgebase_id_knowledgebases",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["ingest_id"], ["ingests.id"], name="fk_knowledgebase_files_ingest_id_ingests", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_knowledgebase_files"),
    )
    op.create_index("ix_knowledgebase_files_base", "knowledgebase_files", ["knowledgebase_id", "status", "created_at"])
    op.create_index("ix_knowledgebase_files_tenant_hash", "knowledgebase_files", ["tenant_id", "content_hash"])


def downgrade() -> None:
    op.drop_table("knowledgebase_files")
    op.drop_table("knowledgebases")
