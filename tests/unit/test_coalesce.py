"""The coalescer on real threads: each caller gets its own rows, callers that queue share a call, every lane works
under load, a failure reaches exactly the callers whose texts it carried."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from memos_pipeline.coalesce import Coalescer

pytestmark = pytest.mark.unit


def lengths(texts: list[str]) -> np.ndarray:
    return np.array([[float(len(t))] for t in texts])


class Lane:
    """A model call that takes a while and records what it was given and how many calls overlapped."""

    def __init__(self, shared: dict[str, int], lock: threading.Lock, fail_on: str | None = None) -> None:
        self.shared, self.lock, self.fail_on, self.calls = shared, lock, fail_on, []

    def __call__(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.shared["running"] += 1
            self.shared["most"] = max(self.shared["most"], self.shared["running"])
        try:
            self.calls.append(list(texts))
            time.sleep(0.05)
            if self.fail_on is not None and self.fail_on in texts:
                raise RuntimeError("model exploded")
            return lengths(texts)
        finally:
            with self.lock:
                self.shared["running"] -= 1


def lanes(n: int, fail_on: str | None = None) -> tuple[list[Lane], dict[str, int]]:
    shared, lock = {"running": 0, "most": 0}, threading.Lock()
    return [Lane(shared, lock, fail_on) for _ in range(n)], shared


def test_each_caller_gets_its_own_rows_and_queued_callers_share_a_call() -> None:
    (lane,), shared = lanes(1)
    c = Coalescer([lane])
    texts = [["a" * (i + 1), "b" * (i + 10)] for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        out = list(pool.map(c.run, texts))
    for t, rows in zip(texts, out, strict=True):
        assert rows.tolist() == lengths(t).tolist()
    assert c.requests == 12 and c.calls < 12  # the ones that queued behind a running call went together
    assert shared["most"] == 1


def test_two_lanes_run_two_calls_at_once_and_never_exceed_max_texts() -> None:
    two, shared = lanes(2)
    c = Coalescer(two, max_texts=4)
    with ThreadPoolExecutor(16) as pool:
        out = list(pool.map(c.run, [[str(i), str(i) * 2] for i in range(16)]))
    assert [r.tolist() for r in out] == [lengths([str(i), str(i) * 2]).tolist() for i in range(16)]
    assert shared["most"] == 2  # both lanes (cores) worked at the same time
    assert all(len(call) <= 4 for lane in two for call in lane.calls)
    assert sum(len(call) for lane in two for call in lane.calls) == 32  # every text embedded exactly once


def test_a_failed_call_fails_its_callers_only_and_frees_its_lane() -> None:
    (lane,), _ = lanes(1, fail_on="boom")
    c = Coalescer([lane])
    with pytest.raises(RuntimeError, match="model exploded"):
        c.run(["boom"])
    assert c.run(["fine"]).tolist() == [[4.0]]  # the lane came back


def test_a_coalescer_needs_a_lane() -> None:
    with pytest.raises(ValueError):
        Coalescer([])


def test_a_lane_takes_its_share_of_the_queue_and_leaves_the_rest_to_the_other() -> None:
    # Eight callers queue while both lanes are busy: the next free lane takes half of the queued texts, not all of
    # them, so the other lane gets the rest as soon as it is free instead of idling behind one long call.
    two, shared = lanes(2)
    c = Coalescer(two)
    with ThreadPoolExecutor(10) as pool:
        first = [pool.submit(c.run, [f"first{i}"]) for i in range(2)]  # occupy both lanes
        time.sleep(0.01)
        rest = [pool.submit(c.run, [f"t{i}a", f"t{i}b"]) for i in range(8)]
        results = [f.result() for f in first + rest]
    assert [r.shape for r in results[2:]] == [(2, 1)] * 8
    queued_calls = [call for lane in two for call in lane.calls if not call[0].startswith("first")]
    assert max(len(call) for call in queued_calls) <= 8  # 16 queued texts, 2 lanes: at most 8 a call
    assert sum(len(call) for call in queued_calls) == 16
    assert shared["most"] == 2
