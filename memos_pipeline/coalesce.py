"""Coalescing calls: the texts of concurrent callers embedded in one model call.

A model call costs a fixed overhead plus a little per text, and only one runs at a time per process (the
tokenizer is not thread-safe, and a second concurrent call would only fight the first for the cores). So while a
call runs, the callers that arrive wait in a queue, and the next one to run takes the whole queue with it: one
call for all of them. Nobody waits for a timer: an idle process embeds a lone request at once, a busy one batches
by itself, and the batch grows exactly as fast as the load does. This is what lets the chunker's threads (one
ingest each) and the search worker's threads (one query each) share the model without serialising on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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
    """``run(texts)`` returns ``fn(texts)``, computed together with whatever other callers queued meanwhile."""

    fn: Callable[[list[str]], np.ndarray]
    max_texts: int = 256  # one call's texts at most: bounds the latency a small request can wait behind
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _pending: list[_Request] = field(default_factory=list)
    _busy: bool = False
    calls: int = 0  # model calls made (for the bench: how much coalescing happened)
    requests: int = 0

    def run(self, texts: list[str]) -> np.ndarray:
        req = _Request(list(texts))
        with self._cv:
            self._pending.append(req)
            self.requests += 1
        while True:
            with self._cv:
                while self._busy and not req.done:
                    self._cv.wait()
                if req.done:
                    break
                # Our turn to run the model, for everyone queued (FIFO, up to max_texts; always at least one).
                self._busy = True
                batch: list[_Request] = []
                n = 0
                while self._pending and (not batch or n + len(self._pending[0].texts) <= self.max_texts):
                    r = self._pending.pop(0)
                    batch.append(r)
                    n += len(r.texts)
                self.calls += 1
            self._compute(batch)
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _compute(self, batch: list[_Request]) -> None:
        try:
            vectors = self.fn([t for r in batch for t in r.texts])
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
            self._busy = False
            self._cv.notify_all()
