"""The runtime text encoder: onnxruntime + tokenizers + numpy, nothing else.

The session is built once with explicit options; only the inputs the graph declares are
fed; pooling and normalisation are small pure functions. Texts are tokenized in batches,
truncated to a bounded length, sorted by length so a batch pads little, and returned in
the caller's order. Repeated short texts (search queries) hit an LRU cache.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Kind = Literal["query", "passage"]


def mean_pool(hidden: FloatArray, mask: IntArray) -> FloatArray:
    """Average the token vectors of each row over its real (mask == 1) tokens."""
    weights = mask[:, :, None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    pooled: FloatArray = (summed / counts).astype(np.float32)
    return pooled


def cls_pool(hidden: FloatArray, mask: IntArray) -> FloatArray:
    """The first token's vector of each row."""
    first: FloatArray = hidden[:, 0, :].astype(np.float32)
    return first


def l2_normalize(vectors: FloatArray) -> FloatArray:
    """Scale each row to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: FloatArray = (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
    return unit


POOLING = {"mean": mean_pool, "cls": cls_pool}


@dataclass(frozen=True, slots=True)
class Manifest:
    """What the export wrote next to the model (see models/README.md)."""

    model_name: str
    dimension: int
    max_length: int
    pooling: str
    query_prefix: str
    passage_prefix: str
    raw: dict[str, Any]

    @classmethod
    def load(cls, model_dir: Path) -> Manifest:
        raw = json.loads((model_dir / "manifest.json").read_text())
        return cls(
            model_name=raw["model_name"],
            dimension=int(raw["dimension"]),
            max_length=int(raw["max_length"]),
            pooling=raw.get("pooling", "mean"),
            query_prefix=raw.get("query_prefix", ""),
            passage_prefix=raw.get("passage_prefix", ""),
            raw=raw,
        )


def session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # ONNX Runtime's threads spin on a core after every run by default, waiting for the next
    # one: right for back-to-back batches (the encoder benchmark), a waste in a worker that
    # embeds a few search queries now and then beside Kafka and the event loop
    options.add_session_config_entry("session.intra_op.allow_spinning",
                                     "1" if spinning else "0")
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Without the arena a worker stays near 130-190 MiB instead of keeping ~860 MiB after a
    # batch of 128 long texts; titles are as fast, 128-token batches ~10% slower (measured).
    options.enable_cpu_mem_arena = False
    # Weights stored as int8 + DequantizeLinear (to keep the file small) are folded back to
    # fp32 once at load instead of being treated as a QDQ pattern; the dynamically
    # quantized MatMuls are not QDQ and keep their int8 kernels.
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


class Encoder:
    """Embeds texts into unit vectors of ``dimension`` floats."""

    def __init__(
        self,
        model_dir: Path,
        *,
        model_file: str = "model.onnx",
        threads: int = 2,
        batch_size: int = 32,
        max_length: int | None = None,
        cache_size: int = 4096,
        spinning: bool = False,
    ) -> None:
        self.manifest = Manifest.load(model_dir)
        self.dimension = self.manifest.dimension
        self.max_length = min(max_length or self.manifest.max_length, self.manifest.max_length)
        self.batch_size = batch_size
        self._pool = POOLING[self.manifest.pooling]
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.no_padding()
        self._pad_id = int(self.manifest.raw.get("pad_token_id", 0))
        self.session = ort.InferenceSession(
            str(model_dir / model_file), sess_options=session_options(threads, spinning),
            providers=["CPUExecutionProvider"],
        )
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._cache: OrderedDict[str, FloatArray] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()  # queries are embedded from worker threads too

    # --- tokenization ---------------------------------------------------------------------

    def _prefixed(self, texts: Sequence[str], kind: Kind) -> list[str]:
        prefix = self.manifest.query_prefix if kind == "query" else self.manifest.passage_prefix
        return [prefix + text for text in texts] if prefix else list(texts)

    def tokenize(self, texts: Sequence[str]) -> tuple[IntArray, IntArray]:
        """Token ids and attention mask, padded to the longest text of the batch."""
        encodings = self.tokenizer.encode_batch(list(texts))
        width = max((len(e.ids) for e in encodings), default=1)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
        return ids, mask

    # --- inference ------------------------------------------------------------------------

    def run(self, ids: IntArray, mask: IntArray) -> FloatArray:
        """One forward pass on a tokenized batch: pooled, unit-length vectors."""
        feeds: dict[str, IntArray] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        feeds = {name: value for name, value in feeds.items() if name in self._inputs}
        hidden = self.session.run(None, feeds)[0]
        return l2_normalize(self._pool(np.asarray(hidden, dtype=np.float32), mask))

    def encode(self, texts: Sequence[str], kind: Kind = "passage",
               progress: Callable[[int, int], None] | None = None) -> FloatArray:
        """Embed ``texts`` (in batches of ``batch_size``, grouped by length); ``progress``
        is told (done, of) after each batch."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        prefixed = self._prefixed(texts, kind)
        lengths = [len(t) for t in prefixed]
        order = sorted(range(len(prefixed)), key=lengths.__getitem__)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            ids, mask = self.tokenize([prefixed[i] for i in chunk])
            out[chunk] = self.run(ids, mask)
            if progress is not None:
                progress(start + len(chunk), len(order))
        return out

    def cached_query(self, text: str) -> FloatArray | None:
        """A query's vector if the LRU cache holds it (no model run)."""
        with self._cache_lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
            return cached

    def encode_query(self, text: str) -> FloatArray:
        """One query, through the LRU cache."""
        cached = self.cached_query(text)
        if cached is not None:
            return cached
        vector: FloatArray = self.encode([text], kind="query")[0]
        vector.setflags(write=False)
        with self._cache_lock:
            self._cache[text] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vector
