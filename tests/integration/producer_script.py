"""Run in its own process by test_producer.py: publish N adds with the producer SDK."""

from __future__ import annotations

import json
import sys

from memos_pipeline.producer import Producer


def main() -> None:
    broker, prefix, tenant, user, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    ids = []
    with Producer(broker, tenant, queue_prefix=prefix) as p:
        for i in range(n):
            mid = f"prod-{i}"
            p.add(
                {
                    "user_id": user,
                    "conversation_id": f"prod-conv-{i % 10}",
                    "messages": [{"role": "user", "content": f"producer message {i} about topic zq{i}x", "id": mid}],
                },
                idempotency_key=f"prod-add-{i}",
            )
            ids.append(mid)
    print(json.dumps({"published": len(ids)}))


if __name__ == "__main__":
    main()
