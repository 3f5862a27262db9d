"""Secrets never reach the logs: the API (gunicorn) and workers (celery) as real processes at DEBUG, configured
with known secrets, driven through good and bad requests and an LLM failure; everything they print is checked.

Secrets configured: a client API key (good and unknown ones sent), the LLM API key, a password in the database
URL (the embedded Postgres trusts local connections, so any password works), in the Redis URL (Redis without
``requirepass`` accepts any password for the default user), in the LLM base URL (httpx sends it as basic auth and
logs request URLs at INFO), and Flower's basic-auth password (MEMOS_FLOWER_PASSWORD, FLOWER_BASIC_AUTH). The broker keeps its real
``guest`` password (too short and common to scrub as a bare word): for it the check is that no ``user:password@``
pair appears in any URL of the logs.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from cli.harness import free_port, running
from fakes.llm import FakeLLM
from memos_pipeline.config import Settings
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope

pytestmark = pytest.mark.integration

WORKER_QUEUES = ("chunker", "memreader")
# URL credentials left in clear text: scheme://user:password@ (the filter turns the password into ***).
CLEAR_URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:(?!\*)[^/\s@]+@", re.IGNORECASE)


@dataclass(frozen=True)
class Secrets:
    api_key: str
    unknown_key: str
    llm_key: str
    db_password: str
    redis_password: str
    llm_url_password: str
    flower_password: str

    def values(self) -> dict[str, str]:
        return dict(self.__dict__)


def _with_password(url: str, user: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest.split('@')[-1]}"


def make_secrets(settings: Settings) -> Secrets:
    with session_scope(settings) as s:
        _, api_key = tenants.create_api_key(s, f"secrets-{uuid.uuid4().hex[:8]}", "secrets in logs")
    # Not shaped like any pattern the filter knows (no sk-, mp_, Token ...): only the known-value rule can catch
    # these, so the test proves the API and workers learnt them from their settings and environment.
    return Secrets(
        api_key=api_key,
        unknown_key="mp_" + secrets.token_urlsafe(32),
        llm_key="llmkey" + secrets.token_hex(12),
        db_password="dbpw" + secrets.token_hex(10),
        redis_password="rdpw" + secrets.token_hex(10),
        llm_url_password="urlpw" + secrets.token_hex(10),
        flower_password="flpw" + secrets.token_hex(10),
    )


@contextmanager
def deployment(settings: Settings, sec: Secrets, llm: FakeLLM, tmp: Path) -> Iterator[str]:
    """Workers (chunker, memreader) and the API at DEBUG with these secrets, logging to ``tmp``; yields the API's
    base URL. On exit every process is stopped (a warm shutdown: its last log lines are checked too)."""
    assert settings.database_url is not None
    host = llm.base_url.split("://", 1)[1]
    cfg = settings.with_overrides(
        database_url=_with_password(settings.database_url, "postgres", sec.db_password),
        redis_url=_with_password(settings.redis_url, "default", sec.redis_password),
        llm_base_url=f"http://llmuser:{sec.llm_url_password}@{host}",
        llm_api_key=sec.llm_key,
        llm_model="fake-model",
        llm_timeout_s=2.0,
        llm_max_retries=0,
        task_max_retries=0,
        queue_prefix=f"secrets{uuid.uuid4().hex[:8]}.",
        bm25_path=tmp / "bm25",
        api_port=free_port(),
        log_level="DEBUG",
        flower_password=sec.flower_password,
    )
    # As `memos-pipeline flower` passes it on: MEMOS_FLOWER_PASSWORD (settings) and FLOWER_BASIC_AUTH (Flower's own).
    flower = {"FLOWER_BASIC_AUTH": f"admin:{sec.flower_password}"}
    # Stopped on exit with a warm shutdown: their last log lines are checked too.
    with running(cfg, WORKER_QUEUES, api=True, log_dir=tmp, env=flower) as stack:
        yield stack.base_url


def _post(base: str, path: str, auth: str | None, body: dict[str, object]) -> requests.Response:
    headers = {"Authorization": auth} if auth is not None else {}
    return requests.post(base + path, json=body, headers=headers, timeout=30)


def test_no_secret_in_any_log(settings: Settings, tmp_path: Path) -> None:
    sec = make_secrets(settings)
    with FakeLLM() as llm, deployment(settings, sec, llm, tmp_path) as base:
        # The LLM refuses the key (401: not transient, the stage fails at once) on every call.
        llm.script(defaults={"facts": {"status": 401}, "preferences": {"status": 401}})
        good = f"Token {sec.api_key}"
        add = {"user_id": "u1", "conversation_id": "c1", "messages": [{"role": "user", "content": "I moved to Lisbon"}]}
        accepted = _post(base, "/add/message", good, add)
        assert accepted.status_code == 202, accepted.text
        # Bad credentials in every shape a client might send them: each is refused, none is logged.
        for auth in (f"Token {sec.unknown_key}", f"Bearer {sec.unknown_key}", sec.unknown_key, f"Token {sec.llm_key}"):
            assert _post(base, "/add/message", auth, add).status_code == 401
        assert _post(base, "/add/message", None, add).status_code == 401
        assert _post(base, "/search/memory", good, {"user_id": "u1", "query": ""}).status_code == 422
        assert requests.get(f"{base}/health", timeout=10).status_code == 200

        # The LLM failure runs its course in the memreader worker (the stage ends failed or dead-lettered).
        task_id = accepted.json()["data"]["task_id"]
        deadline = time.monotonic() + 120
        while True:
            status = _post(base, "/get/status", good, {"task_id": task_id}).json()["data"]
            memreader = status["stages"].get("memreader", {})
            if memreader.get("status") in ("failed", "dead_lettered"):
                break
            assert time.monotonic() < deadline, f"the LLM failure did not surface: {status}"
            time.sleep(0.25)
        assert "401" in memreader.get("error", ""), memreader
        assert llm.calls()["counts"].get("facts", 0) >= 1

    texts = {p.name: p.read_text(errors="replace") for p in sorted(tmp_path.glob("*.log"))}
    assert set(texts) == {"api.log", *(f"worker-{q}.log" for q in WORKER_QUEUES)}
    api, memreader_log = texts["api.log"], texts["worker-memreader.log"]
    # The logs are real and verbose: DEBUG lines, the LLM call (httpx logs its URL, whose password must be gone)
    # and its failure.
    assert "DEBUG" in api, api[-2000:]
    assert "DEBUG" in memreader_log and "AuthenticationError" in memreader_log, memreader_log[-3000:]
    assert "/v1/chat/completions" in memreader_log, memreader_log[-3000:]
    _check(texts, sec)


def _check(texts: dict[str, str], sec: Secrets) -> None:
    # pytest.fail, not assert: assertion rewriting would print the whole log, secret included.
    for name, text in texts.items():
        for what, value in sec.values().items():
            if value in text:
                pytest.fail(f"{what} appears in {name}: ...{_around(text, value)}...")
        clear = CLEAR_URL_CREDENTIALS.search(text)
        if clear is not None:
            pytest.fail(f"URL credentials in clear text in {name}: {clear.group(0)[:-1].rsplit(':', 1)[0]}:<...>@")


def _around(text: str, value: str) -> str:
    i = text.index(value)
    return text[max(0, i - 200) : i + len(value) + 100].replace(value, "<SECRET>")
