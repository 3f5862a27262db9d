"""deploy/compose.yaml and deploy/Dockerfile agree with the code: every queue has its worker, env names are real."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from memos_pipeline.config import Settings
from memos_pipeline.queues import QUEUES

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REQUIRED = ("api", "relay", "migrate", "flower", "rabbitmq", "redis", "postgres", "elasticsearch")
# Variables the third-party images read themselves; everything else in `environment:` must be a Settings alias.
CONTAINER_VARS = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "rabbitmq": {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"},
    "elasticsearch": {"discovery.type", "xpack.security.enabled", "ES_JAVA_OPTS"},
}


def settings_aliases() -> set[str]:
    out: set[str] = set()
    for f in Settings.model_fields.values():
        alias = f.validation_alias
        out.update(str(c) for c in (alias.choices if hasattr(alias, "choices") else [alias]))  # type: ignore[union-attr]
    return out


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc["services"]


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def option(cmd: list[str], flag: str) -> list[str]:
    """Every value given to ``flag`` (``-Q x`` or ``-Q=x``)."""
    values = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == flag]
    return values + [a.split("=", 1)[1] for a in cmd if a.startswith(flag + "=")]


def workers(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Service name -> the queues its `memos-pipeline worker` command consumes."""
    return {
        name: option(command(svc), "-Q")
        for name, svc in services.items()
        if command(svc)[:2] == ["memos-pipeline", "worker"]
    }


def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services running our image."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def test_required_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert not set(REQUIRED) - set(services), sorted(set(REQUIRED) - set(services))


@pytest.mark.parametrize("queue", sorted(QUEUES))
def test_every_queue_has_its_worker(services: dict[str, dict[str, Any]], queue: str) -> None:
    consumers = [name for name, queues in workers(services).items() if queues == [queue]]
    assert consumers, f"no worker service runs `memos-pipeline worker -Q {queue}`"


def test_each_worker_consumes_one_known_queue(services: dict[str, dict[str, Any]]) -> None:
    for name, queues in workers(services).items():
        assert len(queues) == 1, f"{name}: one -Q per worker, got {queues}"
        assert queues[0] in QUEUES, f"{name}: unknown queue {queues[0]!r} (prefixes come from MEMOS_QUEUE_PREFIX)"
        # The queue table is the one source of a worker's concurrency: compose says the same, or nothing when the
        # table says "as many as the cores" (0).
        want = QUEUES[queues[0]].concurrency
        assert option(command(services[name]), "-c") == ([str(want)] if want else []), f"{name}: -c vs queues.py"


def test_the_bm25_writer_is_single(services: dict[str, dict[str, Any]]) -> None:
    for name, queues in workers(services).items():
        if queues == ["indexer"]:
            assert option(command(services[name]), "-c") == ["1"], name
            assert (services[name].get("deploy") or {}).get("replicas", 1) == 1, name


def test_process_commands(services: dict[str, dict[str, Any]]) -> None:
    assert command(services["api"]) == ["memos-pipeline", "api"]
    assert command(services["relay"]) == ["memos-pipeline", "relay"]
    assert command(services["migrate"]) == ["memos-pipeline", "db", "migrate"]
    assert str(services["migrate"].get("restart")) == "no", "a one-shot must not be restarted"
    flower = command(services["flower"])
    assert flower == ["memos-pipeline", "flower", "--address", "0.0.0.0", "--port", "5555"]
    # The password comes from .env (required), never written into the file nor onto a command line.
    assert environment(services["flower"])["MEMOS_FLOWER_PASSWORD"].startswith("${MEMOS_FLOWER_PASSWORD:?")
    assert not any("basic-auth" in a for a in flower), flower


def test_environment_names_are_known(services: dict[str, dict[str, Any]]) -> None:
    known = settings_aliases()
    for name, svc in services.items():
        unknown = set(environment(svc)) - known - CONTAINER_VARS.get(name, set())
        assert not unknown, f"{name}: {sorted(unknown)} are neither Settings aliases nor the image's own variables"


def test_app_services_share_env_and_reach_services_by_name(services: dict[str, dict[str, Any]]) -> None:
    apps = app_services(services)
    assert {"api", "relay", "migrate", "flower"} <= set(apps)
    assert set(workers(services)) <= set(apps)
    for name, svc in apps.items():
        env_file = svc.get("env_file")
        assert env_file in (".env", [".env"]), f"{name}: env_file {env_file!r}"
        env = environment(svc)
        for var, scheme in (
            ("MEMOS_DATABASE_URL", "postgresql"),
            ("MEMOS_BROKER_URL", "amqp"),
            ("MEMOS_REDIS_URL", "redis"),
        ):
            url = urlsplit(env[var])
            assert url.scheme == scheme, f"{name}: {var}={env[var]}"
            assert url.hostname in services, f"{name}: {var} points at {url.hostname}, not a compose service"


def test_bm25_volume_is_shared_by_indexer_and_search(services: dict[str, dict[str, Any]]) -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts: dict[str, set[str]] = {}
    for name, queues in workers(services).items():
        if queues not in (["indexer"], ["search"]):
            continue
        svc = services[name]
        path = environment(svc)["MEMOS_BM25_PATH"]
        sources = {str(v).split(":")[0] for v in svc.get("volumes") or [] if str(v).split(":")[1] == path}
        assert len(sources) == 1, f"{name}: no volume mounted at MEMOS_BM25_PATH={path}"
        mounts[queues[0]] = sources
    assert mounts["indexer"] == mounts["search"], mounts
    assert mounts["indexer"] <= set(doc.get("volumes") or {}), "the BM25 volume must be a named volume"


def test_dockerfile_installs_cpu_torch_first_and_runs_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text().splitlines()
    lines = [ln.strip() for ln in text if ln.strip() and not ln.strip().startswith("#")]
    torch = next(i for i, ln in enumerate(lines) if ln.startswith("RUN pip install") and "torch==2.13.0" in ln)
    package = next(i for i, ln in enumerate(lines) if ln.startswith("RUN pip install /src"))
    assert torch < package, "torch must be installed before the package, or pip resolves a CUDA build"
    assert lines[0] == "FROM python:3.11-slim"
    user = next(ln for ln in lines if ln.startswith("USER "))
    assert user.split()[1] not in ("root", "0")
    assert any(ln.startswith("HEALTHCHECK") for ln in lines)
    assert "/health" in "\n".join(lines)
    assert lines[-1] == 'CMD ["memos-pipeline", "api"]'
