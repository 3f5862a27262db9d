"""Producer SDK: publish adds straight to RabbitMQ from an existing backend, without the HTTP API.

    from memos_pipeline.producer import Producer
    with Producer("amqp://guest:guest@rabbit:5672//", tenant="acme") as p:
        task_id = p.add({"user_id": "u1", "conversation_id": "c1",
                         "messages": [{"role": "user", "content": "I moved to Lisbon"}]})

Only kombu and pydantic are needed: no Flask, no Celery worker code. Each add is validated with the same pydantic
models as the API, published as a persistent Celery protocol-2 message with publisher confirms (``add`` returns
only once RabbitMQ has the message), and carries an idempotency key, so publishing the same add twice — a
producer retry after a timeout — still yields one ingest. The message format is documented in the README and
exported as JSON Schema under ``memos_pipeline/message_schemas/`` for producers in other languages.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from kombu import Connection, Exchange
from pydantic import BaseModel

from memos_pipeline.schemas import AcceptJob, AddRequest, IndexJob, IngestJob, SearchJob

ACCEPT_TASK = "memos.chunker.accept"
SCHEMA_DIR = Path(__file__).parent / "message_schemas"


def celery_message(task: str, payload: dict[str, Any], task_id: str) -> tuple[list[Any], dict[str, Any]]:
    """(body, headers) of a Celery protocol-2 message calling ``task(payload)``: what any AMQP client sends."""
    body = [[payload], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "ignore_result": True,
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "memos-producer",
    }
    return body, headers


class Producer:
    def __init__(self, broker_url: str, tenant: str, *, queue_prefix: str = "", max_messages: int = 500) -> None:
        self.tenant = tenant
        self.max_messages = max_messages
        self._exchange = Exchange(f"{queue_prefix}memos", type="direct", durable=True)
        self._conn = Connection(broker_url, transport_options={"confirm_publish": True})
        self._producer = self._conn.Producer(serializer="json")

    def add(self, request: AddRequest | dict[str, Any], *, idempotency_key: str | None = None) -> str:
        """Publish one add; returns the task id. Raises pydantic.ValidationError for a bad request (nothing sent)
        and a kombu/amqp error when the broker did not confirm it (then retry with the same idempotency_key)."""
        req = (
            request
            if isinstance(request, AddRequest)
            else AddRequest.model_validate(request, context={"max_messages": self.max_messages})
        )
        job = AcceptJob(tenant=self.tenant, idempotency_key=idempotency_key or uuid.uuid4().hex, request=req)
        task_id = str(uuid.uuid4())
        body, headers = celery_message(ACCEPT_TASK, job.model_dump(mode="json", exclude_none=True), task_id)
        self._producer.publish(
            body,
            exchange=self._exchange,
            routing_key="chunker",
            headers=headers,
            correlation_id=task_id,
            delivery_mode=2,
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5},
        )
        return task_id

    def close(self) -> None:
        self._conn.release()

    def __enter__(self) -> Producer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


MESSAGE_MODELS: dict[str, type[BaseModel]] = {
    "memos.chunker.accept": AcceptJob,
    "memos.chunker.chunk": IngestJob,
    "memos.chunker.document": IngestJob,  # a knowledge-base file's ingest
    "memos.chunker.tools": IngestJob,  # an add's tool calls, as tool memories
    "memos.memreader.extract": IngestJob,
    "memos.preference.extract": IngestJob,
    "memos.memreader.feedback": IngestJob,
    "memos.indexer.upsert_ingest": IndexJob,
    "memos.indexer.upsert": IndexJob,
    "memos.search.fast": SearchJob,
}


def message_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every task's payload (the first and only positional argument of the task)."""
    return {task: model.model_json_schema() for task, model in MESSAGE_MODELS.items()}


def export_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for task, schema in message_schemas().items():
        path = directory / f"{task}.json"
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
        out.append(path)
    return out


if __name__ == "__main__":
    for p in export_schemas():
        print(p)
