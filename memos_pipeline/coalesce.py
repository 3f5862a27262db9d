"""Coalescing calls: the texts of concurrent callers embedded in one model call, on one of a few lanes.

A model call costs a fixed overhead plus a little per text, and one call runs on one core (torch with one thread:
intra-op threads scale poorly on batches this small and fight the other processes for the cores). So a process
holds one model per lane (``MEMOS_EMBED_LANES``, one per core by default, at most 4; the fast tokenizer is not
thread-safe, so lanes never share one), and while every lane is busy the callers that arrive wait in a queue; the
next caller to find a lane free takes its lane's share of the queue with it (the queued texts divided by the
lanes): one call for several of them, and the rest for the next free lane. Nobody waits for a timer:
an idle process embeds a lone request at once, a busy one batches by itself, the batch grows exactly as fast as the
load does, and under load every lane (every core) works. This is what lets the chunker's threads (one ingest each)
and the search worker's threads (one query each) share the model without serialising on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Request:
    texts: list[str]
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class Coalescer:
    """``run(texts)`` returns what one of ``lanes`` (functions of the same model, one per lane) makes of ``texts``,
    computed together with whatever other callers queued meanwhile."""

    lanes: Sequence[Callable[[list[str]], np.ndarray]]
    max_texts: int = 256  # one call's texts at most: bounds the latency a small request can wait behind
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _pending: list[_Request] = field(default_factory=list)
    _free: list[int] = field(default_factory=list)
    calls: int = 0  # model calls made (for the bench: how much coalescing happened)
    requests: int = 0

    def __post_init__(self) -> None:
        if not self.lanes:
            raise ValueError("a coalescer needs at least one lane")
        self._free = list(range(len(self.lanes)))

    def run(self, texts: list[str]) -> np.ndarray:
        req = _Request(list(texts))
        with self._cv:
            self._pending.append(req)
            self.requests += 1
        while True:
            with self._cv:
                # Run when a lane is free and our request is still queued; else wait for whoever carries it.
                while not req.done and not (self._free and req in self._pending):
                    self._cv.wait()
                if req.done:
                    break
                lane = self._free.pop()
                # FIFO, at most this lane's share of what is queued (and max_texts), always at least one request: a
                # lane that took the whole queue left the other lanes idle until it was done, and the callers it
                # carried could not bring new work meanwhile (the bench's drain left most of a core idle).
                share = min(self.max_texts, -(-sum(len(r.texts) for r in self._pending) // len(self.lanes)))
                batch: list[_Request] = []
                n = 0
                while self._pending and (not batch or n + len(self._pending[0].texts) <= share):
                    r = self._pending.pop(0)
                    batch.append(r)
                    n += len(r.texts)
                if self._pending and self._free:
                    self._cv.notify_all()  # what is left goes to another free lane now, not after this call
                self.calls += 1
            self._compute(lane, batch)
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _compute(self, lane: int, batch: list[_Request]) -> None:
        try:
            vectors = self.lanes[lane]([t for r in batch for t in r.texts])
            error: BaseException | None = None
        except BaseException as exc:  # every waiter gets the failure of the call that carried its texts
            vectors, error = None, exc
        with self._cv:
            start = 0
            for r in batch:
                if vectors is not None:
                    r.result = vectors[start : start + len(r.texts)]
                    start += len(r.texts)
                r.error, r.done = error, True
            self._free.append(lane)
            self._cv.notify_all()
