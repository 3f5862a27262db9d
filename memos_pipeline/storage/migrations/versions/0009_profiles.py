"""user profiles (issue 11): slots, instances, templates

Revision ID: 0009
Revises: 0008

``profile_slots``: one row per version of one slot of a profile (name, location, ...): a change writes a new
version and archives the old one, so the history stays; at most one activated version per slot.
``profile_instances``: that a user (or a user's agent) has a profile, and the template bound to it.
``profile_templates``: a tenant's templates (MemOS /bind/profile_template), the slots they define.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _uuid_pk() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()"))


def _time(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def _tenant(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "profile_templates",
        _uuid_pk(),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("template_id", sa.String(length=256), nullable=False),
        sa.Column("slots", postgresql.JSONB(), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        _tenant("profile_templates"),
        sa.PrimaryKeyConstraint("id", name="pk_profile_templates"),
        sa.UniqueConstraint("tenant_id", "template_id", name="uq_profile_templates_tenant_template"),
    )
    op.create_table(
        "profile_instances",
        _uuid_pk(),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", sa.String(length=256), nullable=False),
        sa.Column("agent_id", sa.String(length=256), server_default="", nullable=False),
        sa.Column("template_id", sa.String(length=256), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        _tenant("profile_instances"),
        sa.PrimaryKeyConstraint("id", name="pk_profile_instances"),
        sa.UniqueConstraint("tenant_id", "user_id", "agent_id", name="uq_profile_instances_owner"),
    )
    op.create_table(
        "profile_slots",
        _uuid_pk(),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", sa.String(length=256), nullable=False),
        sa.Column("agent_id", sa.String(length=256), server_default="", nullable=False),
        sa.Column("slot", sa.String(length=128), nullable=False),
        sa.Column("slot_group", sa.String(length=128), server_default="", nullable=False),
        sa.Column("value", postgresql.JSONB(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("algorithm_updatable", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("sources", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
        sa.Column("ingest_id", postgresql.UUID(as_uuid=True), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        _tenant("profile_slots"),
        sa.ForeignKeyConstraint(
            ["ingest_id"], ["ingests.id"], name="fk_profile_slots_ingest_id_ingests", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_profile_slots"),
    )
    op.create_index("ix_profile_slots_owner", "profile_slots", ["tenant_id", "user_id", "agent_id", "slot", "version"])
    # One activated version per slot: two writers racing on a slot cannot both make theirs current.
    op.create_index(
        "uq_profile_slots_active",
        "profile_slots",
        ["tenant_id", "user_id", "agent_id", "slot"],
        unique=True,
        postgresql_where=sa.text("status = 'activated'"),
    )


def downgrade() -> None:
    op.drop_table("profile_slots")
    op.drop_table("profile_instances")
    op.drop_table("profile_templates")
