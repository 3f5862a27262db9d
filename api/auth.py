"""Token auth: ``Authorization: Token <key>``; keys are stored hashed and bound to one tenant.

A short in-process cache keeps the hash lookup off the hot path; a revoked key stops working within its TTL.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import redis

from api.errors import RATE_LIMITED, UNAUTHORIZED, ApiError
from memos_pipeline.config import Settings
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope

log = logging.getLogger(__name__)
CACHE_TTL_S = 30.0
_cache: dict[str, tuple[uuid.UUID, float]] = {}
_lock = threading.Lock()


def authenticate(settings: Settings, header: str | None) -> uuid.UUID:
    """The tenant of the request's key (401 otherwise), after the key's rate limit (429 beyond it)."""
    tenant_id, digest = _tenant(settings, header)
    rate_limit(settings, digest)
    return tenant_id


def rate_limit(settings: Settings, digest: str) -> None:
    """Fixed one-minute windows per key in Redis (shared by every API process). Redis being down does not
    take the API down with it: the limit is then not enforced, and the failure is logged."""
    limit = settings.rate_limit_per_min
    if limit <= 0:
        return
    window = int(time.time() // 60)
    key = f"memos:rl:{digest[:32]}:{window}"
    try:
        pipe = _redis(settings).pipeline()
        pipe.incr(key)
        pipe.expire(key, 61)
        count = int(pipe.execute()[0])
    except redis.RedisError as exc:
        log.warning("rate limiter unavailable: %s", exc)
        return
    if count > limit:
        retry_after = 60 - int(time.time()) % 60
        raise ApiError(
            429,
            RATE_LIMITED,
            f"Authorization: rate limit of {limit} requests/minute for this key exceeded",
            headers={"Retry-After": str(retry_after)},
        )


_redis_clients: dict[str, redis.Redis] = {}


def _redis(settings: Settings) -> redis.Redis:
    client = _redis_clients.get(settings.redis_url)
    if client is None:
        client = _redis_clients[settings.redis_url] = redis.Redis.from_url(
            settings.redis_url, socket_timeout=0.1, socket_connect_timeout=0.1
        )
    return client


def _tenant(settings: Settings, header: str | None) -> tuple[uuid.UUID, str]:
    if not header:
        raise ApiError(401, UNAUTHORIZED, "Authorization: header missing; send 'Authorization: Token <key>'")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() not in ("token", "bearer") or not key:
        raise ApiError(401, UNAUTHORIZED, "Authorization: expected 'Token <key>'")
    digest = tenants.hash_key(key)
    now = time.monotonic()
    with _lock:
        hit = _cache.get(digest)
    if hit and hit[1] > now:
        return hit[0], digest
    with session_scope(settings) as s:
        tenant_id = tenants.tenant_for_key(s, key)
    if tenant_id is None:
        raise ApiError(401, UNAUTHORIZED, "Authorization: unknown or revoked key")
    with _lock:
        _cache[digest] = (tenant_id, now + CACHE_TTL_S)
    return tenant_id, digest
