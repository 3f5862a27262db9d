"""An OpenAI-compatible embedding server for the tests: a real separate process speaking the real protocol.

Run: ``python tests/fake_embedder.py --port N --dims D [--delay-ms MS]`` (``--port 0`` picks a free port). The
first line on stdout is ``listening on <port>``. Standard library only, so it starts in milliseconds.

- ``POST /v1/embeddings`` (``float`` or ``base64``): a hashed bag of words, ``D`` wide, unit length: each lowercase
  word adds +-1 at a position chosen by its hash. Deterministic, and texts sharing words are close, so a search by
  this "model" finds what it should (unlike tests/fake_llm.py's per-text hashes, which are 384 wide).
- ``GET /_calls``: ``{"requests": n, "texts": n}`` served so far.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import re
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORD = re.compile(r"\w+", re.UNICODE)


def embed(text: str, dims: int) -> list[float]:
    vec = [0.0] * dims
    for word in WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vec[h % dims] += 1.0 if (h >> 32) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vec))
    if norm == 0:
        vec[0], norm = 1.0, 1.0
    return [x / norm for x in vec]


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.texts = 0


def make_handler(dims: int, delay_s: float, counter: Counter) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/_calls":
                with counter.lock:
                    self._send(200, {"requests": counter.requests, "texts": counter.texts})
            else:
                self._send(404, {"error": {"message": f"no route GET {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path != "/v1/embeddings":
                self._send(404, {"error": {"message": f"no route POST {self.path}", "type": "not_found"}})
                return
            inputs = body.get("input")
            texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
            if delay_s:
                time.sleep(delay_s)
            b64 = body.get("encoding_format") == "base64"
            data = []
            for i, t in enumerate(texts):
                vec = embed(t if isinstance(t, str) else json.dumps(t), dims)
                emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
                data.append({"object": "embedding", "index": i, "embedding": emb})
            with counter.lock:
                counter.requests += 1
                counter.texts += len(texts)
            tokens = sum(len(WORD.findall(str(t))) for t in texts)
            self._send(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": body.get("model") or "fake-bow",
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
            )

    return Handler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dims", type=int, default=256)
    p.add_argument("--delay-ms", type=float, default=0.0, help="added to every request (an endpoint's latency)")
    a = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(a.dims, a.delay_ms / 1000, Counter()))
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
