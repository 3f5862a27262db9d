"""What the fakes share: a small JSON HTTP server run as a real separate process, and the handle that starts,
controls and stops it from a test or a benchmark.

A fake is a module with a ``JsonHandler`` subclass (``GET``/``POST`` map a path to a method name; the method
writes the answer with ``send``) and a ``main`` that calls ``serve``. ``python -m fakes.<name> --port 0`` picks a
free port and prints ``listening on <port>`` as its first line; standard library only, so it starts in
milliseconds. Every fake answers ``GET /health``, ``GET /_calls`` (its call log) and ``POST /_reset``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self

ROOT = Path(__file__).resolve().parent.parent
MAX_LOG = 10_000


class CallLog:
    """The requests a fake served (newest last), for the caller to assert on; subclasses add their own state
    under the same lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: deque[dict[str, Any]] = deque(maxlen=MAX_LOG)

    def log(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append(entry)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            calls = [dict(c) for c in self.calls]
        return {"calls": calls, "count": len(calls)}


class JsonHandler(BaseHTTPRequestHandler):
    """Routes by exact path to a method of the subclass (``GET``/``POST``: path -> method name); a POST method
    gets the parsed JSON body. ``state`` is the server's ``CallLog``."""

    protocol_version = "HTTP/1.1"
    state: ClassVar[CallLog] = CallLog()
    GET: ClassVar[dict[str, str]] = {}
    POST: ClassVar[dict[str, str]] = {}

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the call log is the record
        pass

    def send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def error(self, status: int, message: str) -> None:
        """An error in the protocol this fake speaks (OpenAI's by default)."""
        self.send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def do_GET(self) -> None:
        if self.path in ("/health", "/_health"):
            self.send(200, {"ok": True})
        elif self.path == "/_calls":
            self.send(200, self.state.snapshot())
        elif self.path in self.GET:
            getattr(self, self.GET[self.path])()
        else:
            self.error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads((self.rfile.read(n) if n else b"") or b"{}")
        except json.JSONDecodeError as exc:
            self.error(400, f"body is not JSON: {exc}")
            return
        if self.path == "/_reset":
            self.state.reset()
            self.send(200, {"ok": True})
        elif self.path not in self.POST:
            self.error(404, f"no route POST {self.path}")
        elif not isinstance(body, dict):
            self.error(400, "body is not a JSON object")
        else:
            getattr(self, self.POST[self.path])(body)


def serve(
    handler: type[JsonHandler],
    argv: Sequence[str] | None,
    description: str,
    options: Callable[[argparse.ArgumentParser], None] = lambda _: None,
) -> None:
    """Parse ``--host``/``--port`` (and the fake's own ``options``, which ``handler.configure_from(args)`` applies
    before the first request), then serve until interrupted."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    options(ap)
    args = ap.parse_args(argv)
    configure = getattr(handler, "configure_from", None)
    if configure is not None:
        configure(args)
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128  # 20+ concurrent callers must not see a refused connection
    server = ThreadingHTTPServer((args.host, args.port), handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class FakeProcess:
    """A fake as a child process: ``with FakeReranker() as fr: fr.url("/rerank")``. ``port`` 0 picks a free one
    at start; a fixed port (chosen before the settings that point at it) is kept across ``restart``."""

    module: ClassVar[str]

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.process: subprocess.Popen[str] | None = None

    def url(self, path: str = "") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def args(self) -> list[str]:
        """The fake's own command-line options (its initial configuration)."""
        return []

    def start(self, timeout: float = 15.0) -> Self:
        # The repository root on the path: the fakes run from a checkout whether or not the package is installed.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        cmd = [sys.executable, "-m", self.module, "--host", self.host, "--port", str(self.port), *self.args()]
        self.process = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
        )
        line = _first_line(self.process, timeout)
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{self.module} did not start: {line!r}")
        self.port = int(line.split()[-1])
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (``kill``: SIGKILL at once, an abrupt crash), then SIGKILL if it lingers; only our own child."""
        p, self.process = self.process, None
        if p is None:
            return
        if p.poll() is None:
            p.kill() if kill else p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        if p.stdout is not None:
            p.stdout.close()

    def restart(self) -> Self:
        """A new process on the same port, configured from ``args()`` before it accepts a connection."""
        self.stop()
        return self.start()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import requests  # here: the server processes import this module too, and start in milliseconds

        r = requests.request(method, self.url(path), json=body, timeout=10)
        r.raise_for_status()
        return r.json()

    def calls(self) -> Any:
        return self.call("GET", "/_calls")

    def reset(self) -> None:
        self.call("POST", "/_reset", {})

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's first line of stdout, or "" after ``timeout`` seconds (a hung child must not hang us)."""
    box: list[str] = []
    assert proc.stdout is not None
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(timeout)
    return box[0].strip() if box else ""
