"""``memos-pipeline demo``: the walking pipeline on the example conversation, start to finish."""

from __future__ import annotations

import click

from memos_pipeline.config import Settings
from memos_pipeline.queues import CORE_QUEUES
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


def run_demo(settings: Settings, port: int) -> int:
    from cli.client import ApiClient
    from cli.harness import running

    # Own queues and port: the demo never steals work from (or gives work to) a running `up`.
    settings = settings.with_overrides(queue_prefix=f"demo{port}.", api_port=port)
    click.echo("starting database, workers and API...")
    with running(settings, CORE_QUEUES, api=True, relay=True, quiet=True, timeout=120) as stack:
        with session_scope(settings) as s:
            _, key = tenants.create_api_key(s, "demo", "memos-pipeline demo")
        api = ApiClient(stack.base_url, key, timeout=10)
        click.echo(f"\nPOST /add/message  user={USER_ID} conversation={CONVERSATION_ID}")
        for m in MESSAGES:
            click.echo(f"  {m['role']:>9}: {m['content']}")
        ack_ms, added = api.add(USER_ID, CONVERSATION_ID, MESSAGES)
        status = api.wait_done([added["task_id"]], 60, by="task_id", fail=False)[added["task_id"]]
        stages = ", ".join(f"{k}: {v.get('status')}" for k, v in status["stages"].items())
        click.echo(f"  -> 202 accepted in {ack_ms:.1f} ms; pipeline {status['status']} ({stages})")
        click.echo(f"\nPOST /search/memory  query={QUERY}")
        search_ms, found = api.search(USER_ID, QUERY, conversation_id=CONVERSATION_ID, top_k=5)
        items = found["memory_detail_list"]
        click.echo(f"  -> {len(items)} memories in {search_ms:.1f} ms")
        for i, m in enumerate(items, 1):
            click.echo(
                f"  {i}. [{m['relativity']:.3f}] {m['memory_value'].replace(chr(10), ' | ')}  sources={m['sources']}"
            )
        found_it = any("七天" in m["memory_value"] for m in items[:5])
        click.secho(
            f"\n{'OK' if found_it else 'FAIL'}: a memory containing 七天 is {'in' if found_it else 'not in'} the top 5",
            fg="green" if found_it else "red",
        )
        api.close()
        return 0 if found_it else 1
