"""What ``memos-pipeline reindex`` and ``reembed`` share: calling a step task, checking a queue has workers, and
driving a job's batch tasks as Celery groups, a bounded number in flight (so a live task queued meanwhile waits
behind at most that many groups, not behind the whole job), with a progress bar.

Heavy imports (Celery) happen inside the functions: registering the commands must not slow down ``--help``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from celery import Celery
    from tqdm import tqdm

    from memos_pipeline.config import Settings

STOPPED = 3  # exit status of --stop-after: resumable, not an error


def call(app: Celery, name: str, payload: dict[str, Any], timeout: float) -> Any:
    """Run one step task and wait for its result."""
    result = app.send_task(name, args=[payload], ignore_result=False)
    try:
        return result.get(timeout=timeout)
    finally:
        result.forget()


def require_workers(app: Celery, settings: Settings, queue: str) -> None:
    """Fail with a hint instead of waiting forever on a queue nobody consumes."""
    with app.connection_for_write() as conn:
        try:
            consumers = conn.default_channel.queue_declare(settings.queue(queue), passive=True).consumer_count
        except Exception:
            consumers = 0
    if not consumers:
        raise click.ClickException(
            f"no worker consumes the {settings.queue(queue)!r} queue: start one (memos-pipeline worker -Q {queue})"
        )


def progress_bar(total: int, initial: int, desc: str, progress: bool | None) -> tqdm:
    """Batches done of ``total`` on stderr (None: only on a terminal; False: never, for --json)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="batch",
        desc=desc,
        disable=True if progress is False else None,
        file=sys.stderr,
    )


def drive(
    app: Celery,
    task: str,
    payload: Callable[[int], dict[str, Any]],
    todo: list[int],
    *,
    window: int,
    stop_after: int | None,
    timeout: float,
    bar: tqdm,
    inflight: int = 2,
) -> tuple[int, int]:
    """Run the ``todo`` batches as groups of ``window`` ``task`` tasks (``payload(i)`` for batch ``i``), ``inflight``
    groups at a time. Returns (batches, rows) done, the rows as the tasks report them."""
    from collections import deque

    from celery import group
    from celery.result import AsyncResult

    queue, running = deque(todo), deque[list[AsyncResult]]()
    budget = len(todo) if stop_after is None else min(stop_after, len(todo))
    batches = rows = 0
    while (queue and budget) or running:
        while queue and budget and len(running) < inflight:
            chunk = [queue.popleft() for _ in range(min(window, len(queue), budget))]
            budget -= len(chunk)
            sigs = [app.signature(task, args=[payload(i)], options={"ignore_result": False}) for i in chunk]
            running.append(list(group(sigs).apply_async().results))
        head, deadline, seen = running[0], time.monotonic() + timeout, 0
        while seen < len(head):
            ready = sum(r.ready() for r in head)
            bar.update(ready - seen)
            seen = ready
            if seen < len(head):
                if time.monotonic() > deadline:
                    raise click.ClickException(f"batches not done after {timeout}s (run again to resume)")
                time.sleep(0.02)
        for r in head:
            if r.failed():
                raise click.ClickException(f"batch task {r.id} failed: {r.result!r} (run again to resume)")
            rows += int(r.result or 0)
            r.forget()
        batches += len(head)
        running.popleft()
    return batches, rows
