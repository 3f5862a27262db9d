"""The ONNX runtimes of the local model against sentence-transformers on torch, the reference implementation."""

from __future__ import annotations

import numpy as np
import pytest

from memos_pipeline.config import Settings
from memos_pipeline.embedders import LocalEmbedder

TEXTS = [
    "ok",
    "Caroline: I'm flying to Lisbon on the 14th, back on the 21st.",
    "我暑假定好去广州旅游，住宿的话有哪些连锁酒店可选？",
    "Melanie: " + "we walked along the river and talked about the garden, the library and the market. " * 40,
    "",
]


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return LocalEmbedder(runtime="torch").embed(TEXTS)


def _onnx(runtime: str) -> LocalEmbedder:
    # The machine's shared export (MEMOS_MODEL_CACHE): made once, reused by every stack and test.
    return LocalEmbedder(batch_size=2, runtime=runtime, cache=Settings().model_cache)


def test_onnx_gives_the_torch_vectors(torch_vectors: np.ndarray) -> None:
    # batch_size=2 cuts the texts (sorted by length) into several calls: the order must come back as given,
    # and the long text is truncated at 256 tokens exactly as sentence-transformers truncates it.
    vectors = _onnx("onnx").embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    cosines = (vectors * torch_vectors).sum(axis=1)
    assert cosines.min() > 0.9999, cosines
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_int8_stays_close_to_float(torch_vectors: np.ndarray) -> None:
    vectors = _onnx("onnx-int8").embed(TEXTS)
    cosines = (vectors * torch_vectors).sum(axis=1)
    # Measured: ~0.99 for sentences, less for a word or two ("ok": 0.965), where one token's rounding weighs most.
    assert cosines.min() > 0.95 and cosines.mean() > 0.98, cosines
    # Each text is still nearest to its own float vector, not to another text's.
    assert ((vectors @ torch_vectors.T).argmax(axis=1) == np.arange(len(TEXTS))).all()


def test_no_texts_no_call() -> None:
    assert _onnx("onnx").embed([]).shape == (0, 384)
