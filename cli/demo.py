"""``memos-pipeline demo``: the walking pipeline on the example conversation, start to finish."""

from __future__ import annotations

import time
from typing import Any

import click
import requests

from memos_pipeline.config import Settings
from memos_pipeline.storage import tenants
from memos_pipeline.storage.db import session_scope

USER_ID = "demo_user"
CONVERSATION_ID = "demo_conv"
MESSAGES = [
    {"role": "user", "content": "我暑假定好去广州旅游，住宿的话有哪些连锁酒店可选？"},
    {"role": "assistant", "content": "您可以考虑【七天、全季、希尔顿】等等"},
    {"role": "user", "content": "我选七天"},
    {"role": "assistant", "content": "好的，有其他问题再问我。"},
]
QUERY = "我国庆想出去玩，帮我推荐个没去过的城市，以及没住过的酒店品牌"


def wait_done(base: str, headers: dict[str, str], task_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = requests.post(f"{base}/get/status", json={"task_id": task_id}, headers=headers, timeout=10)
        r.raise_for_status()
        data: dict[str, Any] = r.json()["data"]
        if data["status"] in ("done", "failed") or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def run_demo(settings: Settings, port: int) -> int:
    from cli.stack import Stack

    # Own queues and port: the demo never steals work from (or gives work to) a running `up`.
    settings = settings.with_overrides(queue_prefix=f"demo{port}.", api_port=port)
    stack = Stack(settings, quiet=True)
    click.echo("starting database, workers and API...")
    try:
        stack.start()
        stack.wait_ready()
        with session_scope(settings) as s:
            _, key = tenants.create_api_key(s, "demo", "memos-pipeline demo")
        base, headers = f"http://{settings.api_host}:{port}", {"Authorization": f"Token {key}"}
        click.echo(f"\nPOST /add/message  user={USER_ID} conversation={CONVERSATION_ID}")
        for m in MESSAGES:
            click.echo(f"  {m['role']:>9}: {m['content']}")
        t0 = time.perf_counter()
        r = requests.post(
            f"{base}/add/message",
            headers=headers,
            timeout=10,
            json={"user_id": USER_ID, "conversation_id": CONVERSATION_ID, "messages": MESSAGES},
        )
        r.raise_for_status()
        ack_ms = (time.perf_counter() - t0) * 1000
        task_id = r.json()["data"]["task_id"]
        status = wait_done(base, headers, task_id)
        stages = ", ".join(f"{k}: {v.get('status')}" for k, v in status["stages"].items())
        click.echo(f"  -> {r.status_code} accepted in {ack_ms:.1f} ms; pipeline {status['status']} ({stages})")
        click.echo(f"\nPOST /search/memory  query={QUERY}")
        t0 = time.perf_counter()
        r = requests.post(
            f"{base}/search/memory",
            headers=headers,
            timeout=10,
            json={"user_id": USER_ID, "conversation_id": CONVERSATION_ID, "query": QUERY, "top_k": 5},
        )
        r.raise_for_status()
        search_ms = (time.perf_counter() - t0) * 1000
        items = r.json()["data"]["memory_detail_list"]
        click.echo(f"  -> {len(items)} memories in {search_ms:.1f} ms")
        for i, m in enumerate(items, 1):
            click.echo(
                f"  {i}. [{m['relativity']:.3f}] {m['memory_value'].replace(chr(10), ' | ')}  sources={m['sources']}"
            )
        found = any("七天" in m["memory_value"] for m in items[:5])
        click.secho(
            f"\n{'OK' if found else 'FAIL'}: a memory containing 七天 is {'in' if found else 'not in'} the top 5",
            fg="green" if found else "red",
        )
        return 0 if found else 1
    finally:
        stack.stop()
