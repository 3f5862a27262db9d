"""Starting and driving the fake OpenAI-compatible server (tests/fake_llm.py) from the tests.

Not a pytest plugin (``pytest_plugins`` is only allowed in the root conftest): test modules import
``start_fake_llm`` / ``FakeLLM`` and wrap them in their own fixtures::

    with start_fake_llm() as llm:          # a real process on a free port, answering when this returns
        llm.script(routes={"facts": [{"status": 429}, {"json": {...}}]})
        ... settings.with_overrides(llm_base_url=llm.base_url, ...)
        llm.calls()["counts"]

``llm.url`` is the server root, ``llm.base_url`` the OpenAI base (``.../v1``), ``llm.process`` the Popen.
``stop()`` / ``kill()`` end the process; ``restart()`` starts a new one on the same port with the last script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

FAKE_LLM = Path(__file__).resolve().parent / "fake_llm.py"


class FakeLLM:
    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.process: subprocess.Popen[str] | None = None
        self._script: dict[str, Any] = {}
        fd, name = tempfile.mkstemp(prefix="fake-llm-", suffix=".json")
        os.close(fd)
        self._script_file = Path(name)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # ------------------------------------------------------------------ process

    def start(self, timeout: float = 15.0) -> FakeLLM:
        self._script_file.write_text(json.dumps(self._script), encoding="utf-8")
        cmd = [
            sys.executable,
            str(FAKE_LLM),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--script",
            str(self._script_file),
        ]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "listening on <port>", or "" if it died
        if not line.startswith("listening on "):
            self.process.wait(timeout=5)
            raise RuntimeError(f"fake LLM server did not start (exit code {self.process.returncode}): {line!r}")
        self.port = int(line.split()[-1])
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"fake LLM server on port {self.port} does not answer")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; only our own process, by its handle."""
        p, self.process = self.process, None
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if p.stdout is not None:
            p.stdout.close()

    def kill(self) -> None:
        """An abrupt crash: SIGKILL, in-flight requests see their connection reset."""
        p, self.process = self.process, None
        if p is None:
            return
        p.kill()
        p.wait(timeout=5)
        if p.stdout is not None:
            p.stdout.close()

    def restart(self) -> FakeLLM:
        """A new process on the same port, loaded with the last script before it accepts a connection."""
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        self._script_file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ scripting

    def script(
        self,
        routes: dict[str, list[dict[str, Any]]] | None = None,
        defaults: dict[str, dict[str, Any]] | None = None,
        content_by_match: list[dict[str, Any]] | None = None,
        *,
        reset: bool = True,
    ) -> None:
        """Replace the script; ``reset`` also clears the call log (the usual start of a test)."""
        self._script = {"routes": routes or {}, "defaults": defaults or {}, "content_by_match": content_by_match or []}
        requests.post(f"{self.url}/_script", json={**self._script, "reset": reset}, timeout=5).raise_for_status()

    def reset(self) -> None:
        self._script = {}
        requests.post(f"{self.url}/_reset", timeout=5).raise_for_status()

    def calls(self) -> dict[str, Any]:
        r = requests.get(f"{self.url}/_calls", timeout=5)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]


@contextmanager
def start_fake_llm(port: int = 0) -> Iterator[FakeLLM]:
    """A running fake LLM server process for the duration of the block (always stopped afterwards)."""
    llm = FakeLLM(port)
    try:
        yield llm.start()
    finally:
        llm.close()


def answer(obj: Any) -> dict[str, Any]:
    """A step whose content is ``obj`` as JSON."""
    return {"content": json.dumps(obj, ensure_ascii=False)}
