"""Fakes of the external services (an LLM, an embedding endpoint, a reranker) as real local HTTP servers."""
