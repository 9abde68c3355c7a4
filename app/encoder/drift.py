"""How far a quantized encoder drifts from its fp32 original: cosine per sentence, and how
many of each item's 10 nearest neighbours survive on a real corpus (judging by neighbours,
not only cosine: an encoder can keep a high cosine while reordering them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


class TextEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> FloatArray: ...


class Batched(Protocol):
    def encode(self, texts: Sequence[str], kind: Literal["query", "passage"] = "passage",
               progress: Callable[[int, int], None] | None = None) -> FloatArray: ...


@dataclass(frozen=True, slots=True)
class Followed:
    """``encoder`` telling ``advance(phase, done, of)`` after each batch it encodes (the
    drift measurement's long part, shown as a bar); its vectors are the encoder's own."""

    encoder: Batched
    phase: str
    advance: Callable[[str, int, int], None]

    def encode(self, texts: Sequence[str]) -> FloatArray:
        return self.encoder.encode(
            texts, progress=lambda done, of: self.advance(self.phase, done, of))


@dataclass(frozen=True, slots=True)
class Thresholds:
    mean_cosine: float = 0.99
    min_cosine: float = 0.975
    overlap_at_10: float = 0.90


@dataclass(frozen=True, slots=True)
class Drift:
    mean_cosine: float
    min_cosine: float
    overlap_at_10: float
    sentences: int
    corpus_items: int
    neighbour_queries: int

    def failures(self, limits: Thresholds) -> list[str]:
        found = []
        if self.mean_cosine < limits.mean_cosine:
            found.append(f"mean cosine {self.mean_cosine:.4f} < {limits.mean_cosine}")
        if self.min_cosine < limits.min_cosine:
            found.append(f"min cosine {self.min_cosine:.4f} < {limits.min_cosine}")
        if self.overlap_at_10 < limits.overlap_at_10:
            found.append(f"overlap@10 {self.overlap_at_10:.3f} < {limits.overlap_at_10}")
        return found

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def row_cosines(a: FloatArray, b: FloatArray) -> FloatArray:
    """Cosine of each row of ``a`` with the same row of ``b``."""
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosines: FloatArray = (num / np.clip(den, 1e-12, None)).astype(np.float32)
    return cosines


def top_k(vectors: FloatArray, queries: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.int64]:
    """Indices of the k rows most similar to each query row, the query itself excluded."""
    scores = vectors[queries] @ vectors.T
    scores[np.arange(len(queries)), queries] = -np.inf
    best = np.argpartition(-scores, k, axis=1)[:, :k]
    return best.astype(np.int64)


@dataclass(frozen=True, slots=True)
class Reference:
    """What the fp32 model says, kept so that drift can be checked without it (and without
    torch): sentence embeddings, and the top-10 neighbours of fixed corpus queries."""

    sentence_vectors: FloatArray
    queries: npt.NDArray[np.int64]
    neighbours: npt.NDArray[np.int64]

    @classmethod
    def build(cls, reference: TextEncoder, sentences: Sequence[str], corpus: Sequence[str],
              queries: int = 1000, seed: int = 1) -> Reference:
        picked = np.random.default_rng(seed).choice(len(corpus), min(queries, len(corpus)),
                                                    replace=False).astype(np.int64)
        vectors = reference.encode(corpus)
        return cls(reference.encode(sentences), picked, top_k(vectors, picked, 10))

    def save(self, path: Path) -> None:
        np.savez_compressed(path, sentence_vectors=self.sentence_vectors, queries=self.queries,
                            neighbours=self.neighbours)

    @classmethod
    def load(cls, path: Path) -> Reference:
        with np.load(path) as data:
            return cls(data["sentence_vectors"], data["queries"], data["neighbours"])

    def drift(self, candidate: TextEncoder, sentences: Sequence[str],
              corpus: Sequence[str]) -> Drift:
        """Measure ``candidate`` against this reference."""
        cos = row_cosines(self.sentence_vectors, candidate.encode(sentences))
        got = top_k(candidate.encode(corpus), self.queries, 10)
        overlap = float(np.mean([len(set(r) & set(c)) / 10
                                 for r, c in zip(self.neighbours, got, strict=True)]))
        return Drift(
            mean_cosine=float(cos.mean()),
            min_cosine=float(cos.min()),
            overlap_at_10=overlap,
            sentences=len(sentences),
            corpus_items=len(corpus),
            neighbour_queries=len(self.queries),
        )
