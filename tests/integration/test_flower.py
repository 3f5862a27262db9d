"""`memos-pipeline flower` against real workers for every queue: basic auth, and a worker listed for each queue.

The session's LLM stack (``llm_stack`` in conftest.py) runs a worker for every queue; this module starts Flower on
its queues as a child process through the command itself, and reads its HTTP API.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cli.harness import free_port
from cli.stack import settings_env
from memos_pipeline.config import Settings
from memos_pipeline.queues import QUEUES

pytestmark = pytest.mark.integration


@dataclass
class Flower:
    url: str
    auth: tuple[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    started: float  # time.monotonic() when the process was spawned


@pytest.fixture(scope="module")
def flower(llm_stack: Settings) -> Iterator[Flower]:
    password = secrets.token_urlsafe(18)
    settings = llm_stack.with_overrides(flower_port=free_port(), flower_user="ops", flower_password=password)
    env = settings_env(settings)
    # Flower would otherwise switch task events on for every worker of the (shared) broker, other people's too.
    env["FLOWER_ENABLE_EVENTS"] = "false"
    log = Path(tempfile.mkstemp(prefix="flower-", suffix=".log")[1])
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.flower"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{settings.flower_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"flower exited with {proc.returncode}: {log.read_text()[-2000:]}"
            try:
                requests.get(url + "/healthcheck", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"flower did not listen within 60 s: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield Flower(url, ("ops", password), proc, log, started)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.unlink(missing_ok=True)


def consumers(workers: dict[str, Any], settings: Settings) -> dict[str, list[str]]:
    """Queue (unprefixed) -> the workers Flower lists as consuming it, for this session's queues."""
    out: dict[str, list[str]] = {q: [] for q in QUEUES}
    for name, info in workers.items():
        for q in info.get("active_queues") or []:
            for queue in QUEUES:
                if q.get("name") == settings.queue(queue):
                    out[queue].append(name)
    return out


def test_flower_api_refuses_requests_without_the_right_credentials(flower: Flower) -> None:
    assert requests.get(flower.url + "/api/workers", timeout=10).status_code == 401
    wrong = requests.get(flower.url + "/api/workers", auth=(flower.auth[0], "not-it"), timeout=10)
    assert wrong.status_code == 401
    assert requests.get(flower.url + "/api/workers", auth=flower.auth, timeout=10).status_code == 200


def test_flower_lists_a_worker_for_llm_stack(flower: Flower, llm_stack: Settings) -> None:
    deadline = time.monotonic() + 60
    while True:
        # refresh: Flower broadcasts `inspect` (stats, active_queues, registered, conf) and waits for the replies.
        resp = requests.get(flower.url + "/api/workers", params={"refresh": "true"}, auth=flower.auth, timeout=30)
        assert resp.status_code == 200, resp.text
        listed = resp.json()
        by_queue = consumers(listed, llm_stack)
        if all(by_queue.values()):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"queues without a worker in Flower after 60 s: {[q for q, w in by_queue.items() if not w]}")
        time.sleep(0.5)

    for queue, names in by_queue.items():
        # The node name our workers get (<queue>@<host>), and what Flower learned by inspecting that worker.
        assert any(n.startswith(f"{llm_stack.queue(queue)}@") for n in names), (queue, names)
        for name in names:
            info = listed[name]
            assert any(t.startswith(f"memos.{queue}.") for t in info["registered"]), (name, info["registered"])
            assert info["stats"]["pid"] > 0
            assert info["stats"]["prefetch_count"] >= 1


def test_flower_never_shows_the_password(flower: Flower) -> None:
    password = flower.auth[1]
    cmdline = Path(f"/proc/{flower.process.pid}/cmdline").read_bytes().decode()
    assert "flower" in cmdline
    assert password not in cmdline  # `ps` shows any process's command line to every local user
    assert password not in flower.log.read_text()
