"""Tenants and their API keys: a key is stored only as its hash and is bound to one tenant."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from memos_pipeline.storage.models import ApiKey, Tenant


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, tenant_name: str, key_name: str = "") -> tuple[uuid.UUID, str]:
    """Create the tenant if needed and a new key for it. Returns (tenant_id, key); only the hash is stored."""
    session.execute(insert(Tenant).values(name=tenant_name).on_conflict_do_nothing(index_elements=["name"]))
    tenant_id = session.execute(select(Tenant.id).where(Tenant.name == tenant_name)).scalar_one()
    key = "mp_" + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant_id, name=key_name, key_hash=hash_key(key), key_prefix=key[:10]))
    return tenant_id, key


def tenant_by_name(session: Session, name: str) -> uuid.UUID | None:
    return session.execute(select(Tenant.id).where(Tenant.name == name)).scalar_one_or_none()


def tenant_for_key(session: Session, key: str) -> uuid.UUID | None:
    row = session.execute(
        select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).first()
    return row[0] if row else None
