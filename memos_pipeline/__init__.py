"""memos-pipeline: a memory service for AI applications, built as a distributed Celery pipeline."""

__version__ = "0.1.0"
