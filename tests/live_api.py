"""The API as a real gunicorn process on a free port: exactly what ``memos-pipeline api`` runs (same command line,
settings passed through the environment), for tests that need real HTTP or the process's own log output.

Not a fixture module: test modules wrap ``run_api`` in their own fixtures (``from live_api import run_api``).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from cli.stack import api_command, settings_env
from memos_pipeline.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextmanager
def run_api(
    settings: Settings, log: Path | None = None, extra_env: dict[str, str] | None = None, timeout: float = 60.0
) -> Iterator[str]:
    """Start gunicorn serving ``api:create_app()`` with these settings; yield its base URL once /health answers 200.

    stdout and stderr go to ``log`` (or nowhere); the process is stopped (SIGTERM, then SIGKILL) on exit.
    """
    cfg = settings.with_overrides(api_port=free_port(settings.api_host))
    env = {**settings_env(cfg), **(extra_env or {})}
    base = f"http://{cfg.api_host}:{cfg.api_port}"
    with log.open("wb") if log is not None else open("/dev/null", "wb") as out:
        proc = subprocess.Popen(api_command(cfg), env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(proc, base, timeout, log)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _wait_healthy(proc: subprocess.Popen[bytes], base: str, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise RuntimeError(f"the API exited with code {proc.returncode}:\n{tail}")
        try:
            if requests.get(f"{base}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or a worker still booting (busy cores)
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API at {base} was not healthy after {timeout}s")
        time.sleep(0.1)
