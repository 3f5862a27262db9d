"""A rerank server for the tests and the mixture benchmark: a real separate process speaking the real protocols.

``python -m fakes.reranker --port N [--delay-s S]``; from Python, ``FakeReranker`` below.

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
  "texts" (each cut to 500 characters), "delay_s", "status", "t"}], "count"}``: ``n`` shows whether a caller sent
  windows or the turns they are made of.
- ``POST /_reset``: clear the call log and the config.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from fakes.server import CallLog, FakeProcess, JsonHandler, serve

_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "a about after again all am an and any are as at be been before being but by can could did do does doing "
    "for from had has have having he her here hers him his how i if in into is it its me my no nor not of off "
    "on once only or our ours out over she should so some such than that the their theirs them then there these "
    "they this those to too under until up very was we were what when where which while who whom why will with "
    "would you your yours".split()
)


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


class State(CallLog):
    def __init__(self) -> None:
        super().__init__()
        self.delay_s = 0.0
        self.status: int | None = None
        self.max_batch: int | None = None

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
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
        self.configure({"delay_s": 0.0, "status": None, "max_batch": None, "reset": True})

    def answer_with(self, entry: dict[str, Any]) -> tuple[float, int | None, int | None]:
        """Record a call; the delay, status and batch limit it is answered with (read under the same lock)."""
        with self.lock:
            entry.update(delay_s=self.delay_s, status=self.status or 200)
            self.calls.append(entry)
            return self.delay_s, self.status, self.max_batch


class Handler(JsonHandler):
    server_version = "fake-reranker/1.0"
    state: ClassVar[State] = State()
    GET: ClassVar[dict[str, str]] = {"/_config": "config"}
    POST: ClassVar[dict[str, str]] = {"/_config": "configure", "/rerank": "tei", "/v1/rerank": "v1"}

    @classmethod
    def configure_from(cls, args: argparse.Namespace) -> None:
        cls.state.configure({"delay_s": args.delay_s})

    def config(self) -> None:
        self.send(200, self.state.config())

    def configure(self, body: dict[str, Any]) -> None:
        self.send(200, self.state.configure(body))

    def tei(self, body: dict[str, Any]) -> None:
        self._rerank("tei", body, body.get("texts"))

    def v1(self, body: dict[str, Any]) -> None:
        self._rerank("v1", body, body.get("documents"))

    def _error(self, protocol: str, status: int, message: str) -> None:
        if protocol == "tei":
            self.send(status, {"error": message, "error_type": "Validation" if status == 422 else "Backend"})
        else:
            self.error(status, message)

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
        delay_s, status, max_batch = self.state.answer_with(entry)
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
                text = body.get("return_text")
                self.send(
                    200, [{"index": i, "score": scores[i], **({"text": texts[i]} if text else {})} for i in order]
                )
                return
            top_n = body.get("top_n")
            if isinstance(top_n, int) and top_n > 0:
                order = order[:top_n]
            docs = body.get("return_documents")
            results = [
                {"index": i, "relevance_score": scores[i], **({"document": {"text": texts[i]}} if docs else {})}
                for i in order
            ]
            tokens = sum(len(_WORD.findall(t)) for t in texts) + len(_WORD.findall(query)) * len(texts)
            usage = {"prompt_tokens": tokens, "total_tokens": tokens}
            model = body.get("model") or "fake-reranker"
            self.send(200, {"object": "rerank", "model": model, "results": results, "usage": usage})
        except (BrokenPipeError, ConnectionResetError):
            entry["outcome"] = "client_gone"  # the caller timed out while we were "thinking"
            self.close_connection = True


def main(argv: Sequence[str] | None = None) -> None:
    def options(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--delay-s", type=float, default=0.0, help="initial delay before every rerank answer")

    serve(Handler, argv, "A rerank server (TEI /rerank and /v1/rerank).", options)


class FakeReranker(FakeProcess):
    """The server as a child process: ``with FakeReranker() as fr: fr.url("/rerank")``."""

    module = "fakes.reranker"

    def __init__(self, port: int = 0, delay_s: float = 0.0) -> None:
        super().__init__(port)
        self.delay_s = delay_s

    def url(self, path: str = "/rerank") -> str:
        return super().url(path)

    def args(self) -> list[str]:
        return ["--delay-s", str(self.delay_s)]

    def configure(self, **config: Any) -> dict[str, Any]:
        """``delay_s``, ``status``, ``max_batch``, ``reset`` (see POST /_config)."""
        out: dict[str, Any] = self.call("POST", "/_config", config)
        return out

    def calls(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = super().calls()["calls"]
        return out


if __name__ == "__main__":
    main()
