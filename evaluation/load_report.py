"""What one load step measured (``summarize``), whether its rate is sustainable, and the PNG of the run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.bench import latency
from evaluation.load_driver import Outcome, Timeline

# A rate is sustainable when all of these hold (each failure is named in ``why_not``):
MAX_ERROR_RATE = 0.01  # at most 1% of requests fail
MIN_ACHIEVED = 0.95  # the adds acknowledged per second reach 95% of the offered rate
MAX_GROWTH_SHARE = 0.05  # the backlog grows by at most 5% of the offered rate over the second half of the window,
MIN_GROWTH_ITEMS = 3.0  # or by fewer than this many ingests in all over that half (noise at low rates)
MIN_DRAIN_S, DRAIN_SHARE = 5.0, 0.1  # after the load stops, the backlog drains within max(5 s, 10% of the window)


@dataclass(frozen=True)
class Window:
    """Where a step's load window lies: on the run's timeline (seconds since the run started) and on the wall
    clock (to compare with the ingests' timestamps in Postgres)."""

    start: float
    seconds: float
    wall_start: float

    @property
    def end(self) -> float:
        return self.start + self.seconds


def _slope(ts: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(ts) < 3 or max(ts) - min(ts) <= 0:
        return None
    return float(np.polyfit(np.asarray(ts, dtype=float), np.asarray(ys, dtype=float), 1)[0])


def _nearest(tl: Timeline, t: float) -> int | None:
    if not tl.t:
        return None
    return min(range(len(tl.t)), key=lambda i: abs(tl.t[i] - t))


def summarize(
    outcomes: list[Outcome],
    t0: float,
    win: Window,
    tl: Timeline,
    ingests: list[tuple[float, float | None, str]],
    add_rate: float,
    search_rate: float,
    per_add: int,
) -> dict[str, Any]:
    """One step: errors, latencies, achieved rates, time to done, backlog and queue depths, drain, verdict.

    ``ingests``: (created, finished or None, status) on the wall clock for every add this step got accepted.
    """
    adds = [o for o in outcomes if o.kind == "add"]
    searches = [o for o in outcomes if o.kind == "search"]
    failed = [o for o in outcomes if not o.ok]
    ok_adds = [o for o in adds if o.ok]
    last_ack = max((o.done for o in ok_adds), default=t0)
    achieved = len(ok_adds) / max(last_ack - t0, win.seconds)
    reasons = Counter((o.error or "").split(":")[0] for o in failed)

    ttd = [(c, (f - c) * 1000) for c, f, st in ingests if f is not None and st == "done"]
    thirds = win.seconds / 3
    first = [ms for c, ms in ttd if c < win.wall_start + thirds]
    last = [ms for c, ms in ttd if c >= win.wall_start + 2 * thirds]
    finished = [f for _, f, _ in ingests if f is not None]
    all_done = len(finished) == len(ingests)
    drain_s = max(0.0, max(finished) - (win.wall_start + win.seconds)) if finished and all_done else None
    done_in_window = sum(1 for f in finished if f <= win.wall_start + win.seconds)

    second_half = tl.window(win.start + win.seconds / 2, win.end)
    growth = _slope([tl.t[i] for i in second_half], [tl.backlog[i] for i in second_half])
    at_end = _nearest(tl, win.end)
    in_window = tl.window(win.start, win.end)
    depth_max = {q: max((v[i] or 0 for i in in_window), default=0) for q, v in tl.queues.items()}
    depth_end = {q: (v[at_end] if at_end is not None else None) for q, v in tl.queues.items()}

    error_rate = len(failed) / max(len(outcomes), 1)
    why_not = []
    if error_rate > MAX_ERROR_RATE:
        why_not.append(f"error rate {error_rate:.1%} > {MAX_ERROR_RATE:.0%}")
    if achieved < MIN_ACHIEVED * add_rate:
        why_not.append(f"achieved {achieved:.2f} adds/s < {MIN_ACHIEVED:.0%} of the offered {add_rate:g}")
    if growth is not None and growth > MAX_GROWTH_SHARE * add_rate and growth * win.seconds / 2 > MIN_GROWTH_ITEMS:
        why_not.append(f"backlog grew {growth:.2f} ingests/s over the second half of the window")
    drain_limit = max(MIN_DRAIN_S, DRAIN_SHARE * win.seconds)
    if drain_s is None:
        why_not.append("the backlog did not drain after the load stopped")
    elif drain_s > drain_limit:
        why_not.append(f"draining took {drain_s:.1f}s > {drain_limit:.1f}s")
    return {
        "offered": {
            "add_rate": add_rate,
            "search_rate": round(search_rate, 3),
            "seconds": win.seconds,
            "per_add": per_add,
            "msgs_per_s": round(add_rate * per_add, 2),
        },
        "requests": {"adds": len(adds), "searches": len(searches), "total": len(outcomes)},
        "errors": {
            "count": len(failed),
            "rate": round(error_rate, 4),
            "by_reason": dict(reasons),
            "examples": [o.error for o in failed[:3]],
        },
        "achieved_add_rate": round(achieved, 2),
        "achieved_search_rate": round(sum(o.ok for o in searches) / max(win.seconds, 1e-9), 2),
        "add_ack_ms": latency([o.latency_ms for o in ok_adds]),
        "add_service_ms": latency([o.service_ms for o in ok_adds]),
        "search_ms": latency([o.latency_ms for o in searches if o.ok]),
        "search_service_ms": latency([o.service_ms for o in searches if o.ok]),
        "ingests": {
            "accepted": len(ingests),
            "done": sum(st == "done" for _, _, st in ingests),
            "failed": sum(st == "failed" for _, _, st in ingests),
            "done_in_window_per_s": round(done_in_window / win.seconds, 2),
        },
        "time_to_done_ms": {
            **latency([ms for _, ms in ttd]),
            "first_third_p50": latency(first)["p50"],
            "last_third_p50": latency(last)["p50"],
        },
        "backlog": {
            "max": max((tl.backlog[i] for i in in_window), default=0),
            "at_load_end": tl.backlog[at_end] if at_end is not None else None,
            "growth_per_s_second_half": None if growth is None else round(growth, 3),
        },
        "queue_depth_max": depth_max,
        "queue_depth_at_load_end": depth_end,
        "drain_s": None if drain_s is None else round(drain_s, 2),
        "sustainable": not why_not,
        "why_not": why_not,
        "window_s": [round(win.start, 2), round(win.end, 2)],
    }


def plot(tl: Timeline, steps: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Queue depth per queue and the backlog over time, above the offered and the completed add rate."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file, from any thread or process
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=(3, 2))
    t = np.asarray(tl.t, dtype=float)
    for q, values in tl.queues.items():
        top.step(t, [np.nan if v is None else v for v in values], where="post", label=f"queue {q} (ready)")
    top.plot(t, tl.backlog, color="black", linestyle="--", linewidth=1.2, label="backlog (ingests not done)")
    top.set_ylabel("messages / ingests")
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)

    offered_t, offered_y = [0.0], [0.0]
    for s in steps:
        start, end = s["window_s"]
        offered_t += [start, start, end, end]
        offered_y += [0.0, s["offered"]["add_rate"], s["offered"]["add_rate"], 0.0]
        colour = "tab:green" if s["sustainable"] else "tab:red"
        for ax in (top, bottom):
            ax.axvspan(start, end, color=colour, alpha=0.07)
    if len(t) > 1:
        offered_t.append(float(t[-1]))
        offered_y.append(0.0)
        # completed ingests per second, smoothed over ~2 s of samples
        rate = np.diff(np.asarray(tl.done, dtype=float)) / np.maximum(np.diff(t), 1e-9)
        k = max(1, round(2.0 / max(float(np.median(np.diff(t))), 1e-3)))
        smooth = np.convolve(rate, np.ones(k) / k, mode="same")
        bottom.plot(t[1:], smooth, color="tab:blue", label="adds done per s (pipeline)")
    bottom.plot(offered_t, offered_y, color="tab:orange", label="offered adds per s")
    bottom.set_xlabel("seconds since the run started (green: sustainable step, red: not)")
    bottom.set_ylabel("adds / s")
    bottom.legend(loc="upper left", fontsize=8)
    bottom.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
