"""A local rerank HTTP server for the tests and the mixture benchmark: a real separate process, the real protocols.

Run: ``python tests/fake_reranker.py --port N`` (``--port 0`` picks a free port). The first line on stdout is
``listening on <port>``. Standard library only, so it starts in milliseconds.

Rerank endpoints (both answer with the results sorted by score, best first, as the real services do, so a client
that trusts the order instead of ``index`` is caught):

- TEI (text-embeddings-inference) ``POST /rerank`` ``{"query", "texts", "raw_scores"?, "return_text"?,
  "truncate"?}`` -> ``[{"index", "score", "text"?}]``;
- OpenAI/Infinity/Jina style ``POST /v1/rerank`` ``{"model"?, "query", "documents", "top_n"?,
  "return_documents"?}`` -> ``{"object": "rerank", "model", "results": [{"index", "relevance_score",
  "document"?}], "usage": {"total_tokens"}}``.

An empty ``texts``/``documents`` list or a missing query is a 422 (TEI: ``{"error", "error_type"}``; v1: an OpenAI
style error body).

The score is a deterministic relevance function, :func:`relevance`: the cosine between the query's and the text's
sets of content words (lower-cased word tokens, a small English stopword list removed, a plural ``s`` stripped),
so in [0, 1]. It rewards a short text that says what the query asks over a long one that merely mentions its words:
deliberately not what BM25 + dense fusion rank first, so a test can tell the reranker's order from the fast one.

Control (per test, over HTTP):

- ``POST /_config`` ``{"delay_s": x, "status": code, "max_batch": n, "reset": bool}``: sleep ``delay_s`` before
  every rerank answer (a slow model), answer every rerank with HTTP ``status`` instead (a broken service; ``null``
  or 200 to heal it), reject a request with more than ``max_batch`` texts with a 422 as TEI does beyond its
  ``--max-client-batch-size`` (default 32 there; ``null`` here: no limit), and ``"reset": true`` also clears the
  call log. Keys not given keep their value. Answers the config.
- ``GET /_config``: the current config.
- ``GET /_calls``: ``{"calls": [{"path", "protocol" ("tei"|"v1"), "model", "query", "n" (number of texts),
  "texts" (each cut to 500 characters), "delay_s", "status", "t"}], "count"}``: ``n`` shows whether a caller sent windows or the
  turns they are made of.
- ``POST /_reset``: clear the call log and the config.
- ``GET /health``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "a about after again all am an and any are as at be been before being but by can could did do does doing "
    "for from had has have having he her here hers him his how i if in into is it its me my no nor not of off "
    "on once only or our ours out over she should so some such than that the their theirs them then there these "
    "they this those to too under until up very was we were what when where which while who whom why will with "
    "would you your yours".split()
)
MAX_LOG = 10_000


def content_words(text: str) -> set[str]:
    """Lower-cased word tokens without stopwords, a trailing plural ``s`` stripped (``bikes`` == ``bike``)."""
    words = (w for w in _WORD.findall(text.lower()) if w not in STOPWORDS)
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words}


def relevance(query: str, text: str) -> float:
    """Cosine between the two sets of content words: |Q & T| / sqrt(|Q| * |T|), in [0, 1]; 0 if either is empty."""
    q, t = content_words(query), content_words(text)
    if not q or not t:
        return 0.0
    return len(q & t) / math.sqrt(len(q) * len(t))


class State:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.delay_s = 0.0
        self.status: int | None = None
        self.max_batch: int | None = None
        self.calls: deque[dict[str, Any]] = deque(maxlen=MAX_LOG)

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if "delay_s" in body:
                self.delay_s = max(0.0, float(body["delay_s"] or 0.0))
            if "status" in body:
                status = body["status"]
                self.status = None if status in (None, 200) else int(status)
            if "max_batch" in body:
                self.max_batch = int(body["max_batch"]) if body["max_batch"] else None
            if body.get("reset"):
                self.calls.clear()
            return self.config()

    def config(self) -> dict[str, Any]:
        return {"delay_s": self.delay_s, "status": self.status, "max_batch": self.max_batch}

    def reset(self) -> None:
        with self._lock:
            self.delay_s, self.status, self.max_batch = 0.0, None, None
            self.calls.clear()

    def log(self, entry: dict[str, Any]) -> tuple[float, int | None, int | None]:
        """Record a call; the delay, status and batch limit it is answered with (read under the same lock)."""
        with self._lock:
            entry.update(delay_s=self.delay_s, status=self.status or 200)
            self.calls.append(entry)
            return self.delay_s, self.status, self.max_batch

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            calls = list(self.calls)
        return {"calls": calls, "count": len(calls)}


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-reranker/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the call log is the record
        pass

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw or b"{}")

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, protocol: str, status: int, message: str) -> None:
        if protocol == "tei":
            self._send(status, {"error": message, "error_type": "Validation" if status == 422 else "Backend"})
        else:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def do_GET(self) -> None:
        if self.path == "/_calls":
            self._send(200, STATE.snapshot())
        elif self.path == "/_config":
            self._send(200, STATE.config())
        elif self.path in ("/health", "/_health"):
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": f"no route GET {self.path}"})

    def do_POST(self) -> None:
        try:
            body = self._body()
        except json.JSONDecodeError as exc:
            self._send(400, {"error": f"body is not JSON: {exc}"})
            return
        if not isinstance(body, dict):
            self._send(400, {"error": "body is not a JSON object"})
        elif self.path == "/_config":
            self._send(200, STATE.configure(body))
        elif self.path == "/_reset":
            STATE.reset()
            self._send(200, {"ok": True})
        elif self.path == "/rerank":
            self._rerank("tei", body, body.get("texts"))
        elif self.path == "/v1/rerank":
            self._rerank("v1", body, body.get("documents"))
        else:
            self._send(404, {"error": f"no route POST {self.path}"})

    def _rerank(self, protocol: str, body: dict[str, Any], texts: Any) -> None:
        query = body.get("query")
        if not isinstance(query, str) or not query:
            self._error(protocol, 422, "query must be a non-empty string")
            return
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            field = "texts" if protocol == "tei" else "documents"
            self._error(protocol, 422, f"`{field}` must be a non-empty list of strings")
            return
        entry = {
            "path": self.path,
            "protocol": protocol,
            "model": body.get("model"),
            "query": query,
            "n": len(texts),
            "texts": [t[:500] for t in texts],
            "t": time.time(),
        }
        delay_s, status, max_batch = STATE.log(entry)
        try:
            if max_batch is not None and len(texts) > max_batch:  # validated before any work, as TEI does
                entry["status"] = 422
                self._error(protocol, 422, f"batch size {len(texts)} > maximum allowed batch size {max_batch}")
                return
            if delay_s:
                time.sleep(delay_s)
            if status is not None:
                self._error(protocol, status, f"configured to fail with HTTP {status}")
                return
            scores = [relevance(query, t) for t in texts]
            order = sorted(range(len(texts)), key=lambda i: (-scores[i], i))
            if protocol == "tei":
                self._send(
                    200,
                    [
                        {"index": i, "score": scores[i], **({"text": texts[i]} if body.get("return_text") else {})}
                        for i in order
                    ],
                )
                return
            top_n = body.get("top_n")
            if isinstance(top_n, int) and top_n > 0:
                order = order[:top_n]
            results = [
                {
                    "index": i,
                    "relevance_score": scores[i],
                    **({"document": {"text": texts[i]}} if body.get("return_documents") else {}),
                }
                for i in order
            ]
            tokens = sum(len(_WORD.findall(t)) for t in texts) + len(_WORD.findall(query)) * len(texts)
            self._send(
                200,
                {
                    "object": "rerank",
                    "model": body.get("model") or "fake-reranker",
                    "results": results,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
            )
        except (BrokenPipeError, ConnectionResetError):
            entry["outcome"] = "client_gone"  # the caller timed out while we were "thinking"
            self.close_connection = True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-s", type=float, default=0.0, help="initial delay before every rerank answer")
    args = ap.parse_args(argv)
    STATE.configure({"delay_s": args.delay_s})
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128  # 20+ concurrent callers must not see a refused connection
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


# ---------------------------------------------------------------- for the callers: start, control, stop


class FakeReranker:
    """The server as a child process: ``with FakeReranker.running() as fr: fr.url("/rerank")``."""

    def __init__(self, port: int = 0, delay_s: float = 0.0) -> None:
        self.port, self.delay_s = port, delay_s
        self.proc: Any = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/rerank") -> str:
        return self.base + path

    def start(self, timeout: float = 15.0) -> FakeReranker:
        import os
        import subprocess

        cmd = [sys.executable, os.path.abspath(__file__), "--port", str(self.port), "--delay-s", str(self.delay_s)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = _readline(self.proc.stdout, timeout)
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"fake reranker did not start: {line!r}")
        self.port = int(line.split()[-1])
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def configure(self, **config: Any) -> dict[str, Any]:
        """``delay_s``, ``status``, ``reset`` (see POST /_config)."""
        out: dict[str, Any] = self._call("POST", "/_config", config)
        return out

    def reset(self) -> None:
        self._call("POST", "/_reset", {})

    def calls(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._call("GET", "/_calls")["calls"]
        return out

    @classmethod
    def running(cls, port: int = 0, delay_s: float = 0.0) -> _Running:
        return _Running(cls(port, delay_s))


class _Running:
    def __init__(self, fr: FakeReranker) -> None:
        self.fr = fr

    def __enter__(self) -> FakeReranker:
        return self.fr.start()

    def __exit__(self, *exc: object) -> None:
        self.fr.stop()


def _readline(stream: Any, timeout: float) -> str:
    """The first line of a child's stdout, or "" after ``timeout`` seconds (a hung child must not hang us)."""
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0].strip() if box else ""


if __name__ == "__main__":
    main()
