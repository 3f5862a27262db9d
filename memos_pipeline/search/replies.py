"""Search answers handed straight to the API request that waits for them: a Redis list per request.

The search worker pushes its answer to ``memos:reply:<id>`` (one RPUSH + EXPIRE, one round trip) and the API request
blocks on that list with BLPOP, which returns the moment the answer lands. Through Celery's Redis result backend the
same answer cost a SUBSCRIBE at publish time, a SET + PUBLISH in the worker and a GET per ``ready()`` poll in the
API, polled 1 to 5 ms apart.

The deadline is kept here, not by Redis: Redis checks blocked clients' timeouts in its cron, 10 times a second by
default (measured on Redis 7: BLPOP with a 50 ms timeout returned after 90-110 ms), which would break mixture mode's
hard deadline. So the wait polls the socket with the time left, and a connection whose BLPOP is still pending at the
deadline is closed, never returned to the pool, where the next caller would read the late answer as its own.
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import redis

REPLY_TTL_S = 60  # an answer nobody collects (its request gave up) disappears after this
# Socket timeout for writing a command and reading an answer that has started to arrive; waiting for the answer
# itself is bounded by the caller's deadline instead.
SOCKET_TIMEOUT_S = 5.0


def reply_key(request_id: str) -> str:
    return f"memos:reply:{request_id}"


@functools.cache
def client(url: str) -> redis.Redis:
    """One client (and connection pool) per process and URL, made on first use: after a fork, never before."""
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=1.0)


def push(r: redis.Redis, key: str, answer: dict[str, Any]) -> None:
    """Deliver ``answer`` ({"ok": result} or {"error": message}) to the request waiting on ``key``."""
    pipe = r.pipeline(transaction=False)
    pipe.rpush(key, json.dumps(answer, ensure_ascii=False))
    pipe.expire(key, REPLY_TTL_S)
    pipe.execute()


def wait(r: redis.Redis, key: str, timeout_s: float) -> dict[str, Any] | None:
    """The answer pushed to ``key``, or None when none arrived within ``timeout_s`` (kept to the millisecond)."""
    if timeout_s <= 0:
        raw = r.lpop(key)
        return json.loads(raw) if isinstance(raw, bytes | str) else None
    deadline = time.monotonic() + timeout_s
    pool = r.connection_pool
    conn = pool.get_connection()  # (re)connecting counts against the deadline too
    try:
        # The server-side timeout only stops a BLPOP whose client vanished; it never ends our wait before ours does.
        conn.send_command("BLPOP", key, math.ceil(timeout_s) + 1)
        if not conn.can_read(timeout=max(deadline - time.monotonic(), 0.0)):
            conn.disconnect()  # the BLPOP is still pending: this connection must not serve anyone else
            return None
        reply = conn.read_response()
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    if reply is None:  # the backstop timeout above (only reached if the clock jumped)
        return None
    answer: dict[str, Any] = json.loads(reply[1])
    return answer
