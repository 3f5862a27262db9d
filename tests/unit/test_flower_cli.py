"""`memos-pipeline flower`: never without auth, credentials through the environment rather than the command line."""

from __future__ import annotations

import pytest

from cli.flower import FlowerConfigError, basic_auth, flower_command
from memos_pipeline.config import Settings

pytestmark = pytest.mark.unit


def settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg, arg-type]


def test_refuses_without_a_password() -> None:
    with pytest.raises(FlowerConfigError, match="MEMOS_FLOWER_PASSWORD"):
        basic_auth(settings(flower_password=None))
    with pytest.raises(FlowerConfigError, match="MEMOS_FLOWER_PASSWORD"):
        basic_auth(settings(flower_password=""))


@pytest.mark.parametrize(
    ("user", "password", "name"),
    [("ad:min", "pw", "MEMOS_FLOWER_USER"), ("ad,min", "pw", "MEMOS_FLOWER_USER"), ("admin", "p,w", "PASSWORD")],
)
def test_rejects_credentials_flower_would_split(user: str, password: str, name: str) -> None:
    with pytest.raises(FlowerConfigError, match=name) as err:
        basic_auth(settings(flower_user=user, flower_password=password))
    assert "p,w" not in str(err.value)  # the message names the setting, never shows its value


def test_credentials_travel_in_the_environment_not_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "true")
    monkeypatch.setenv("FLOWER_BROKER_API", "http://stale:stale@elsewhere:15672/api/")
    # Explicitly unset: Settings would otherwise read FLOWER_BROKER_API too (its field name, populate_by_name).
    cfg = settings(
        flower_user="ops", flower_password="s3cret:with-colon", queue_prefix="staging.", flower_broker_api=None
    )
    argv, env = flower_command(cfg, "127.0.0.1", 5599)
    assert argv[1:6] == ["-m", "celery", "-A", "workers.celery", "flower"]
    assert "--address=127.0.0.1" in argv and "--port=5599" in argv
    assert not any("s3cret" in a for a in argv)
    assert env["FLOWER_BASIC_AUTH"] == "ops:s3cret:with-colon"  # a password may hold ":" (split at the first)
    assert "FLOWER_UNAUTHENTICATED_API" not in env
    assert "FLOWER_BROKER_API" not in env  # only ours, when configured
    assert env["MEMOS_QUEUE_PREFIX"] == "staging."  # Flower's app sees this deployment's queues

    api = "http://memos:pw@rabbitmq:15672/api/"
    _, env = flower_command(cfg.with_overrides(flower_broker_api=api), "0.0.0.0", 5555)
    assert env["FLOWER_BROKER_API"] == api
