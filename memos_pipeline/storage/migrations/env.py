"""Alembic environment: runs against the URL of the shared settings object, with lock/statement timeouts."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from memos_pipeline.config import get_settings
from memos_pipeline.storage.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.attributes.get("url") or get_settings().sqlalchemy_url
    engine = create_engine(url)
    with engine.connect() as connection:
        # A migration that waits on a lock held by a busy worker must fail fast rather than stall the API.
        connection.execute(text("SET lock_timeout = '10s'"))
        connection.execute(text("SET statement_timeout = '300s'"))
        connection.commit()
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
