"""The chaos suite's load: adds whose every message can be found again, sent the way a careful client sends them.

Every message carries a marker word of its own (consonants only: the analyzer keeps it whole, and nothing else in
the corpus contains it), so "is this message searchable" is one search for its marker. Each add has an
``Idempotency-Key``: a client that got no answer (timeout, 5xx while Postgres restarts) sends the same add again
with the same key, which is what makes "accepted exactly once" checkable: an add is accepted when a 202 with an
ingest id came back, and a retried add that had been committed after all comes back as that same ingest.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from cli.client import ApiClient
from evaluation.texts import ConversationGenerator

USER_ID = "chaos_user"
HTTP_TIMEOUT_S = 30.0
GIVE_UP_S = 300.0  # a client stops retrying one add after this long (the add then counts as not accepted)
_LETTERS = "bcdfghjklmnpqrtvwxz"  # no vowels, no s or y: no stemmer rule applies to them


def marker(n: int) -> str:
    """A unique made-up word for message number ``n`` of the run."""
    digits = ""
    while True:
        n, r = divmod(n, len(_LETTERS))
        digits = _LETTERS[r] + digits
        if n == 0:
            break
    return f"zqx{digits}"


@dataclass
class Add:
    phase: str
    conversation_id: str
    messages: list[dict[str, Any]]
    key: str  # Idempotency-Key
    markers: dict[str, str]  # client message id -> its marker word


@dataclass
class Outcome:
    """What the client saw for one add."""

    add: Add
    first_sent: float = 0.0
    accepted_at: float | None = None  # wall clock (time.time) of the 202
    ingest_id: str | None = None
    published: bool | None = None
    duplicate: bool | None = None
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.ingest_id is not None


def plan_adds(
    gen: ConversationGenerator, run: str, phase: str, messages: int, per_add: int, clients: int, first_marker: int
) -> list[Add]:
    """``messages`` messages in adds of ``per_add``, over ``clients`` conversations, interleaved so that any prefix
    of the list spreads over the conversations; each conversation's adds stay in order."""
    sizes = [per_add] * (messages // per_add) + ([messages % per_add] if messages % per_add else [])
    per_conv: list[list[Add]] = []
    n = first_marker
    for c in range(clients):
        conv = f"{run}-{phase}-c{c}"
        mine = sizes[c::clients]
        msgs = gen.conversation(conv, sum(mine))
        adds, start = [], 0
        for j, size in enumerate(mine):
            # No speaker names: the fake LLM's capable mode extracts a fact from every line spoken by "user".
            batch = [{k: v for k, v in m.items() if k != "name"} for m in msgs[start : start + size]]
            marks = {}
            for m in batch:
                marks[m["id"]] = marker(n)
                m["content"] = f"{m['content']} (ref {marker(n)})"
                n += 1
            adds.append(Add(phase, conv, batch, f"{conv}-a{j}", marks))
            start += size
        per_conv.append(adds)
    out: list[Add] = []
    for j in range(max((len(a) for a in per_conv), default=0)):
        out.extend(adds[j] for adds in per_conv if j < len(adds))
    return out


class Client(ApiClient):
    """The run's client (one keep-alive session per sending thread): adds sent the careful way, and searches."""

    def memories(self, query: str, top_k: int = 5, **filters: str) -> list[dict[str, Any]]:
        body = {"user_id": USER_ID, "query": query, "top_k": top_k, "filters": filters}
        found: list[dict[str, Any]] = self.post("/search/memory", body, timeout=15)[1]["memory_detail_list"]
        return found

    def send(self, out: Outcome, stop: threading.Event) -> None:
        """Until a 202 (or the give-up time): transport errors, 5xx and 429 are retried with the same key."""
        add, pause = out.add, 0.2
        out.first_sent = time.time()
        body = {"user_id": USER_ID, "conversation_id": add.conversation_id, "messages": add.messages}
        while not stop.is_set():
            out.attempts += 1
            try:
                r = self.request("/add/message", body, headers={"Idempotency-Key": add.key})
            except requests.RequestException as exc:
                out.errors.append(f"{type(exc).__name__}")
            else:
                if r.status_code == 202:
                    data = r.json()["data"]
                    out.accepted_at, out.ingest_id = time.time(), str(data["ingest_id"])
                    out.published, out.duplicate = bool(data.get("published")), bool(data.get("duplicate"))
                    return
                out.errors.append(f"HTTP {r.status_code}")
                if r.status_code < 500 and r.status_code != 429:
                    return  # a 4xx other than 429 is a bug in the add, not something to wait out
            if time.time() - out.first_sent > GIVE_UP_S:
                return
            stop.wait(pause)
            pause = min(pause * 2, 2.0)


class Sender:
    """One thread per conversation, each sending its adds in order; an add may wait for its scheduled time."""

    def __init__(self, client: Client, conversations: list[str], on_done: Callable[[Outcome], None]) -> None:
        self.client, self.on_done = client, on_done
        self.stop = threading.Event()
        self.queues: dict[str, queue.Queue[tuple[float, Outcome] | None]] = {c: queue.Queue() for c in conversations}
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(q,), daemon=True, name=f"chaos-client-{c}")
            for c, q in self.queues.items()
        ]
        for t in self.threads:
            t.start()

    def _run(self, q: queue.Queue[tuple[float, Outcome] | None]) -> None:
        while (item := q.get()) is not None:
            at, out = item
            if (wait := at - time.time()) > 0 and self.stop.wait(wait):
                return
            try:
                self.client.send(out, self.stop)
            except Exception as exc:  # a malformed answer must not kill the thread (join() would wait forever)
                out.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            self.on_done(out)
            q.task_done()
        q.task_done()

    def submit(self, adds: list[Add], over_s: float = 0.0) -> list[Outcome]:
        """Queue ``adds``; with ``over_s``, the k-th is not sent before now + k * over_s / len(adds)."""
        now, outs = time.time(), []
        for k, add in enumerate(adds):
            out = Outcome(add)
            outs.append(out)
            self.queues[add.conversation_id].put((now + k * over_s / max(len(adds), 1), out))
        with self._lock:
            self.outcomes.extend(outs)
        return outs

    def join(self) -> None:
        """Until every queued add has its outcome."""
        for q in self.queues.values():
            q.join()

    def close(self) -> None:
        self.stop.set()
        for q in self.queues.values():
            q.put(None)
        for t in self.threads:
            t.join(timeout=HTTP_TIMEOUT_S + 5)
