"""ingests.idempotency_key: one ingest per (tenant, client key)

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ingests", sa.Column("idempotency_key", sa.String(length=128), nullable=True))
    op.create_unique_constraint("uq_ingests_tenant_idempotency_key", "ingests", ["tenant_id", "idempotency_key"])


def downgrade() -> None:
    op.drop_constraint("uq_ingests_tenant_idempotency_key", "ingests", type_="unique")
    op.drop_column("ingests", "idempotency_key")
