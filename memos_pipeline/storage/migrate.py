"""Run Alembic migrations programmatically (the CLI, `up` and the test fixtures all call this)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from memos_pipeline.config import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = settings.sqlalchemy_url
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)
