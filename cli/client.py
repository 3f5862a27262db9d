"""The HTTP API as a client program sees it, for the demo, the benchmarks and the tests: ``Authorization: Token
<key>``, JSON bodies, the envelope (``{"code", "message", "data"}``) unwrapped."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Self

import requests


class HttpError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """One tenant's client. Each calling thread gets its own keep-alive session: the benchmarks' client threads
    each hold a connection, as separate clients would."""

    def __init__(self, base: str, key: str, timeout: float = 30.0, rate_limit_waits: int = 10) -> None:
        self.base, self.key, self.timeout, self.rate_limit_waits = base, key, timeout, rate_limit_waits
        self.headers = {"Authorization": f"Token {key}"}
        self.retries = 0  # requests repeated after a 5xx, for the caller's report
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update(self.headers)
            with self._lock:
                self._sessions.append(session)
        return session

    def request(self, path: str, body: Any = None, *, method: str = "POST", **kwargs: Any) -> requests.Response:
        """One request as it is, whatever its status (``kwargs`` go to requests: headers, timeout, data)."""
        kwargs.setdefault("timeout", self.timeout)
        return self.session().request(method, self.base + path, json=body, **kwargs)

    def post(
        self, path: str, body: dict[str, Any], expect: int = 200, retries: int = 0, timeout: float | None = None
    ) -> tuple[float, Any]:
        """(round trip in ms until the whole answer is read, the envelope's ``data``); ``HttpError`` naming the
        status for anything but ``expect``. A 429 waits its ``Retry-After`` and repeats (the key's rate limit, up
        to ``rate_limit_waits`` times); a 5xx repeats after a second up to ``retries`` times (counted)."""
        waits = 0
        while True:
            t0 = time.perf_counter()
            r = self.request(path, body, timeout=timeout or self.timeout)
            ms = (time.perf_counter() - t0) * 1000
            if r.status_code == 429 and waits < self.rate_limit_waits:
                waits += 1
                time.sleep(min(60.0, float(r.headers.get("Retry-After") or 1)))
            elif r.status_code >= 500 and retries > 0:
                retries -= 1
                with self._lock:
                    self.retries += 1
                time.sleep(1.0)
            elif r.status_code != expect:
                raise HttpError(r.status_code, f"POST {path}: HTTP {r.status_code} (expected {expect}): {r.text[:300]}")
            else:
                return ms, r.json()["data"]

    def add(self, user_id: str, conversation_id: str, messages: list[dict[str, Any]], **body: Any) -> tuple[float, Any]:
        """(ms, data) of an accepted add: ``data["ingest_id"]``, ``data["task_id"]``."""
        body = {"user_id": user_id, "conversation_id": conversation_id, "messages": messages, **body}
        return self.post("/add/message", body, expect=200 if body.get("async_mode") == "sync" else 202)

    def search(self, user_id: str, query: str, retries: int = 0, **body: Any) -> tuple[float, Any]:
        return self.post("/search/memory", {"user_id": user_id, "query": query, **body}, retries=retries)

    def wait_done(
        self, ids: Sequence[str], timeout: float, *, by: str = "ingest_id", bar: Any = None, fail: bool = True
    ) -> dict[str, Any]:
        """Poll ``/get/status`` (a few ids a round, the oldest first) until every ingest finished; returns each
        one's status. A failed ingest raises (``fail``); so does the timeout. A 5xx just asks again next round."""
        pending, final = list(ids), {}
        deadline = time.monotonic() + timeout
        while pending:
            still: list[str] = []
            for i in pending[:8]:
                try:
                    _, data = self.post("/get/status", {by: i})
                except HttpError as e:
                    if e.status < 500:
                        raise
                    with self._lock:
                        self.retries += 1
                    still.append(i)
                    continue
                if data["status"] == "failed" and fail:
                    raise RuntimeError(f"ingest {i} failed: {data['stages']}")
                if data["status"] in ("done", "failed"):
                    final[i] = data
                else:
                    still.append(i)
            still += pending[8:]
            if bar is not None:
                bar.update(len(pending) - len(still))
            pending = still
            if pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(pending)} of {len(ids)} ingests not done after {timeout:.0f}s")
                time.sleep(0.05 if len(ids) == 1 else 0.25)
        return final

    def close(self) -> None:
        for s in self._sessions:
            s.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
