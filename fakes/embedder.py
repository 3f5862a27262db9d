"""An OpenAI-compatible embedding server: a real separate process speaking the real protocol, standing in for a
second embedding model (``memos-pipeline reembed --model openai:...``).

``python -m fakes.embedder --port N --dims D [--delay-ms MS]``; from Python, ``FakeEmbedder`` below.

- ``POST /v1/embeddings`` (``float`` or ``base64``): a hashed bag of words, ``D`` wide, unit length: each lowercase
  word adds +-1 at a position chosen by its hash. Deterministic, and texts sharing words are close, so a search by
  this "model" finds what it should (unlike ``fakes.llm``'s per-text hashes, which are 384 wide).
- ``GET /_calls``: ``{"calls": [{"texts": n}], "count": requests}``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from fakes.llm import embeddings_response
from fakes.server import FakeProcess, JsonHandler, serve

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


class Handler(JsonHandler):
    POST: ClassVar[dict[str, str]] = {"/v1/embeddings": "embeddings"}
    dims: ClassVar[int] = 256
    delay_s: ClassVar[float] = 0.0

    @classmethod
    def configure_from(cls, args: argparse.Namespace) -> None:
        cls.dims, cls.delay_s = args.dims, args.delay_ms / 1000

    def embeddings(self, body: dict[str, Any]) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        out = embeddings_response(
            body, lambda t: embed(t, self.dims), self.dims, "fake-bow", lambda t: len(WORD.findall(t))
        )
        self.state.log({"texts": len(out["data"])})
        self.send(200, out)


def main(argv: Sequence[str] | None = None) -> None:
    def options(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--dims", type=int, default=256)
        ap.add_argument("--delay-ms", type=float, default=0.0, help="added to every request (an endpoint's latency)")

    serve(Handler, argv, "An OpenAI-compatible embedding server (a hashed bag of words).", options)


class FakeEmbedder(FakeProcess):
    """The server as a child process; ``spec`` is the model spec ``reembed --model`` takes."""

    module = "fakes.embedder"

    def __init__(self, dims: int = 256, delay_ms: float = 0.0) -> None:
        super().__init__()
        self.dims, self.delay_ms = dims, delay_ms

    def args(self) -> list[str]:
        return ["--dims", str(self.dims), "--delay-ms", str(self.delay_ms)]

    @property
    def spec(self) -> str:
        return f"openai:fake-bow@{self.url('/v1')}"


if __name__ == "__main__":
    main()
