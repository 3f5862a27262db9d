"""Settings: deploy/.env.example lists every variable with its true default; env vars override; database URLs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from memos_pipeline.config import Settings

pytestmark = pytest.mark.unit

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / ".env.example"
# `NAME=value` or `# NAME=value`; prose comments never have `=` straight after an upper-case word.
LINE = re.compile(r"^(?P<hash>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def aliases() -> dict[str, str]:
    """Env var name -> field name, for every validation alias of every field."""
    out: dict[str, str] = {}
    for field_name, f in Settings.model_fields.items():
        alias = f.validation_alias
        assert alias is not None, f"{field_name} has no env var name"
        choices = alias.choices if hasattr(alias, "choices") else [alias]
        for choice in choices:
            assert isinstance(choice, str), f"{field_name}: alias {choice!r} is not a plain name"
            out[choice] = field_name
    return out


def env_example() -> dict[str, tuple[bool, str]]:
    """Name -> (commented out, value) for every assignment line of deploy/.env.example."""
    out: dict[str, tuple[bool, str]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = LINE.match(line.strip())
        if m:
            name = m["name"]
            assert name not in out, f"{name} appears twice in {ENV_EXAMPLE.name}"
            out[name] = (m["hash"] is not None, m["value"].strip())
    return out


def as_env(value: Any) -> str:
    """A default as it is written in an env file."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_env_example_lists_exactly_the_settings() -> None:
    listed, known = set(env_example()), set(aliases())
    assert not known - listed, f"missing from deploy/.env.example: {sorted(known - listed)}"
    assert not listed - known, f"in deploy/.env.example but not in Settings: {sorted(listed - known)}"


def test_env_example_defaults_match() -> None:
    names = aliases()
    for name, (commented, value) in env_example().items():
        if commented:
            continue
        default = Settings.model_fields[names[name]].default
        # `NAME=` would set "" rather than leave the field unset: a None default has to be a commented line.
        assert default is not None, f"{name} defaults to unset; comment its line out"
        assert value == as_env(default), f"{name}: .env.example says {value!r}, Settings defaults to {default!r}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No Settings variable from the developer's shell leaks into these tests."""
    for name in aliases():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_env_vars_override_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ASYNC_MODE", "sync")
    clean_env.setenv("BM25_CALL", "false")
    clean_env.setenv("MEMOS_QUEUE_PREFIX", "staging.")
    clean_env.setenv("MIXTURE_DEADLINE_MS", "150")
    clean_env.setenv("MEMOS_BM25_PATH", "/data/bm25")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.async_mode == "sync"
    assert s.bm25_call is False
    assert s.queue("search") == "staging.search"
    assert s.mixture_deadline_ms == 150
    assert s.bm25_dir == Path("/data/bm25")


def test_defaults_without_env(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.async_mode, s.bm25_call, s.queue("search")) == ("async", True, "search")
    assert s.embedded_db


def test_invalid_env_value_is_rejected(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ASYNC_MODE", "sometimes")
    with pytest.raises(ValueError, match="ASYNC_MODE"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "url",
    [
        "postgres://memos:pw@db.example:5432/memos",
        "postgresql://memos:pw@db.example:5432/memos",
        "postgresql+psycopg://memos:pw@db.example:5432/memos",
    ],
)
def test_sqlalchemy_url_uses_psycopg3(url: str) -> None:
    s = Settings(_env_file=None, database_url=url)  # type: ignore[call-arg]
    assert s.sqlalchemy_url == "postgresql+psycopg://memos:pw@db.example:5432/memos"
    assert not s.embedded_db


def test_sqlalchemy_url_from_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MEMOS_DATABASE_URL", "postgres://u@h/db")
    assert Settings(_env_file=None).sqlalchemy_url == "postgresql+psycopg://u@h/db"  # type: ignore[call-arg]


def test_sqlalchemy_url_embedded(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings(_env_file=None, pg_port=60001)  # type: ignore[call-arg]
    assert s.sqlalchemy_url == "postgresql+psycopg://postgres@127.0.0.1:60001/memos"
