"""The two moving parts of ``memos-pipeline load``: an open-loop HTTP driver and a queue-depth sampler.

Open loop: every request has a scheduled send time fixed before the run (``i / rate`` after the start), and its
latency is measured from that scheduled time, not from when a client thread got round to sending it. A closed
loop (send, wait, send) slows down when the server does and so never sees the queue it causes (coordinated
omission); here a slow server shows up as latency, and as a shortfall in the achieved rate.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from sqlalchemy import text
from tqdm import tqdm

from cli.client import ApiClient
from memos_pipeline.config import Settings
from memos_pipeline.storage.db import get_engine

HTTP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Planned:
    """One request of the schedule: ``at`` seconds after the start of the step."""

    at: float
    kind: str  # "add" | "search"
    path: str
    body: dict[str, Any]


@dataclass
class Outcome:
    kind: str
    scheduled: float  # monotonic clock
    sent: float
    done: float
    status: int | None  # None: no HTTP answer (connection error, client timeout)
    error: str | None = None
    ingest_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency_ms(self) -> float:
        """From the scheduled send time to the whole answer read (what a caller on that schedule waited)."""
        return (self.done - self.scheduled) * 1000

    @property
    def service_ms(self) -> float:
        """From the actual send to the answer: the server's share, without time waiting for a client thread."""
        return (self.done - self.sent) * 1000


EXPECTED = {"add": 202, "search": 200}


class Driver:
    """Sends a schedule of JSON POSTs from a pool of client threads, each with its own keep-alive session."""

    def __init__(self, api: ApiClient, threads: int = 64) -> None:
        self.api, self.threads = api, threads

    def send(self, req: Planned, scheduled: float) -> Outcome:
        sent = time.monotonic()
        try:
            r = self.api.request(req.path, req.body, timeout=HTTP_TIMEOUT_S)
            body = r.content  # read it all: the latency ends with the last byte
        except requests.RequestException as exc:
            return Outcome(req.kind, scheduled, sent, time.monotonic(), None, f"{type(exc).__name__}")
        done = time.monotonic()
        if r.status_code != EXPECTED[req.kind]:
            return Outcome(req.kind, scheduled, sent, done, r.status_code, f"HTTP {r.status_code}: {body[:200]!r}")
        try:
            ingest_id = str(r.json()["data"]["ingest_id"]) if req.kind == "add" else None
        except (ValueError, KeyError, TypeError) as exc:  # a 202 without the envelope is a failed add too
            return Outcome(req.kind, scheduled, sent, done, r.status_code, f"bad body: {type(exc).__name__}")
        return Outcome(req.kind, scheduled, sent, done, r.status_code, ingest_id=ingest_id)

    def run(self, schedule: Sequence[Planned], bar: tqdm[Any] | None = None) -> tuple[float, list[Outcome]]:
        """Send every request at its time; return (the start on the monotonic clock, outcomes in schedule order)."""
        ordered = sorted(schedule, key=lambda p: p.at)
        with cf.ThreadPoolExecutor(self.threads, thread_name_prefix="load-client") as pool:
            t0 = time.monotonic() + 0.05
            futures: list[cf.Future[Outcome]] = []
            for req in ordered:
                scheduled = t0 + req.at
                pause = scheduled - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                fut = pool.submit(self.send, req, scheduled)
                if bar is not None:
                    fut.add_done_callback(lambda _f: bar.update())
                futures.append(fut)
            return t0, [f.result() for f in futures]


# ---------------------------------------------------------------- queue depths over time


@dataclass
class Timeline:
    """Samples taken every ``interval`` seconds: time since the run started, broker depth per queue (ready
    messages), and the pipeline backlog (ingests accepted but not yet done: includes messages being worked on)."""

    t: list[float] = field(default_factory=list)
    queues: dict[str, list[int | None]] = field(default_factory=dict)
    backlog: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)

    def window(self, start: float, end: float) -> list[int]:
        """Indexes of the samples taken in [start, end]."""
        return [i for i, t in enumerate(self.t) if start <= t <= end]


class Sampler(threading.Thread):
    """Samples queue depths (AMQP passive declare: ``message_count``) and the backlog of this tenant's ingests."""

    def __init__(
        self, cfg: Settings, queues: Sequence[str], tenant_id: uuid.UUID, t0: float, interval: float = 0.5
    ) -> None:
        super().__init__(name="load-sampler", daemon=True)
        self.cfg, self.names, self.tenant_id, self.t0, self.interval = cfg, list(queues), tenant_id, t0, interval
        self.timeline = Timeline(queues={q: [] for q in self.names})
        self.lock = threading.Lock()
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from memos_pipeline.celery_app import make_celery

        sql = text(
            "SELECT count(*), count(*) FILTER (WHERE status IN ('done', 'failed')) FROM ingests "
            "WHERE tenant_id = :tenant"
        )
        try:
            with make_celery(self.cfg).connection_for_write() as conn, get_engine(self.cfg).connect() as db:
                channel = conn.channel()
                while not self._stop_event.is_set():
                    started = time.monotonic()
                    depths: dict[str, int | None] = {}
                    for q in self.names:
                        try:
                            depths[q] = int(channel.queue_declare(self.cfg.queue(q), passive=True).message_count)
                        except Exception:  # the queue vanished or the channel closed: note a gap, reopen
                            depths[q] = None
                            channel = conn.channel()
                    total, done = db.execute(sql, {"tenant": self.tenant_id}).one()
                    db.rollback()  # a fresh snapshot next time
                    with self.lock:
                        tl = self.timeline
                        tl.t.append(round(started - self.t0, 3))
                        for q in self.names:
                            tl.queues[q].append(depths[q])
                        tl.backlog.append(int(total) - int(done))
                        tl.done.append(int(done))
                    self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))
        except BaseException as exc:  # surfaced by the run, which must not report numbers without samples
            self.error = exc

    def latest(self) -> tuple[int, dict[str, int | None]]:
        """(backlog, depth per queue) of the last sample."""
        with self.lock:
            tl = self.timeline
            if not tl.t:
                return -1, {}
            return tl.backlog[-1], {q: v[-1] for q, v in tl.queues.items()}

    def wait_drained(self, timeout: float, quiet_samples: int = 2) -> bool:
        """Until the backlog and every queue stay empty for a couple of samples, or ``timeout``."""
        deadline, empty, seen = time.monotonic() + timeout, 0, -1
        while time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError(f"the queue sampler failed: {self.error!r}")
            backlog, depths = self.latest()
            if (n := len(self.timeline.t)) != seen:
                seen = n
                empty = empty + 1 if backlog == 0 and not any(depths.values()) else 0
                if empty >= quiet_samples:
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
