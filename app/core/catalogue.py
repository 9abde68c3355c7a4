"""Catalogue items as the recommender sees them: cleaned, described in one text for the
encoder, and held with their vectors in an in-memory index for retrieval."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from app.contract.records import ItemUpsert
from app.core import consumed

FloatArray = npt.NDArray[np.float32]

# Defaults for missing fields (documented in docs/pipeline.md)
UNKNOWN_CATEGORY = "uncategorised"


def clean_label(text: str) -> str:
    """Trimmed, case-folded, inner whitespace collapsed: "  Sci-Fi  DVDs " -> "sci-fi dvds"."""
    return " ".join(text.split()).casefold()


class CatalogueEntry(msgspec.Struct, frozen=True, array_like=True):
    """One item as published on the catalogue topic: attributes plus its vector."""

    item_id: str
    title: str
    category: str
    brand: str
    price: float | None
    in_stock: bool
    text: str
    vector: bytes          # float32, little-endian, the encoder's dimension
    model: str             # which encoder made the vector
    ts: int

    def array(self) -> FloatArray:
        return np.frombuffer(self.vector, dtype="<f4")


def item_text(item: ItemUpsert) -> str:
    """What the encoder reads: title, category, brand, description, then attributes."""
    parts = [item.title.strip()]
    for value in (item.category, item.brand):
        if value.strip():
            parts.append(" ".join(value.split()))
    if item.description.strip():
        parts.append(" ".join(item.description.split()))
    for key in sorted(item.attributes):
        attribute = item.attributes[key]
        if not isinstance(attribute, bool):
            parts.append(f"{key}: {attribute}")
    return ". ".join(parts)


def entry(item: ItemUpsert, vector: FloatArray, model: str) -> CatalogueEntry:
    return CatalogueEntry(
        item_id=item.item_id,
        title=item.title.strip(),
        category=clean_label(item.category) or UNKNOWN_CATEGORY,
        brand=clean_label(item.brand),
        price=item.price,
        in_stock=item.in_stock,
        text=item_text(item),
        vector=np.asarray(vector, dtype="<f4").tobytes(),
        model=model,
        ts=item.ts,
    )


@dataclass
class PriceStats:
    """Running mean and variance of log(1 + price) per category (Welford)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, price: float) -> None:
        x = float(np.log1p(price))
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def z(self, price: float) -> float:
        """How expensive for its category, in standard deviations (0 when unknown)."""
        if self.count < 2:
            return 0.0
        std = (self.m2 / (self.count - 1)) ** 0.5
        return 0.0 if std == 0 else (float(np.log1p(price)) - self.mean) / std


ANN_MARGIN = 16  # extra neighbours asked of the graph, for items filtered out after it


class ApproximateIndex:
    """An HNSW graph (usearch, inner product) over the live rows of a :class:`VectorIndex`,
    kept in step with it: keys are row numbers. Chosen over faiss and hnswlib because it
    removes and replaces vectors in place and ships wheels (measured: `streamrec bench
    index`)."""

    def __init__(self, dimension: int, connectivity: int = 16, expansion_search: int = 512
                 ) -> None:
        # onnxruntime must be loaded before usearch: the other way round, importing
        # onnxruntime crashes the process (segfault; usearch 2.26 / onnxruntime 1.2x,
        # reproduced in tests/unit/test_vector_index.py)
        import onnxruntime  # noqa: F401
        from usearch.index import Index

        self._index = Index(ndim=dimension, metric="ip", dtype="f32",
                            connectivity=connectivity, expansion_search=expansion_search)

    def __len__(self) -> int:
        return len(self._index)

    def put(self, row: int, vector: FloatArray) -> None:
        if self._index.contains(row):
            self._index.remove(row)
        self._index.add(row, vector)

    def put_many(self, rows: npt.NDArray[np.int64], vectors: FloatArray) -> None:
        self._index.add(rows, vectors)

    def drop(self, row: int) -> None:
        if self._index.contains(row):
            self._index.remove(row)

    def search(self, query: FloatArray, count: int) -> npt.NDArray[np.int64]:
        found = self._index.search(query, count)
        rows: npt.NDArray[np.int64] = np.asarray(found.keys, dtype=np.int64)
        return rows


class VectorIndex:
    """Inner-product search over unit vectors, updated in place: upsert, remove, mark out of
    stock. Rows are reused after removal; the matrix grows by doubling. Exact (numpy) up to
    ``ann_threshold`` items; above it an :class:`ApproximateIndex` answers searches (the
    matrix stays the source of truth for vectors and scores)."""

    def __init__(self, dimension: int, capacity: int = 1024,
                 ann_threshold: int | None = None) -> None:
        self.dimension = dimension
        self.ann_threshold = ann_threshold
        self._ann: ApproximateIndex | None = None
        self._matrix = np.zeros((capacity, dimension), dtype=np.float32)
        self._live = np.zeros(capacity, dtype=bool)       # present and in stock
        self._hash = np.zeros(capacity, dtype=np.uint32)  # each row's id hashed (consumed)
        self._ids: list[str | None] = [None] * capacity
        self._row: dict[str, int] = {}
        self._free: list[int] = []
        self._used = 0
        self.version = 0   # bumped by every change: answers cached for a version stay true

    def __len__(self) -> int:
        return len(self._row)

    @property
    def rows(self) -> int:
        """Rows in use (live or not): the length of a query's scores."""
        return self._used

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def upsert(self, item_id: str, vector: FloatArray, available: bool = True) -> None:
        self.version += 1
        row = self._row.get(item_id)
        if row is None:
            row = self._free.pop() if self._free else self._next_row()
            self._row[item_id] = row
            self._ids[row] = item_id
            self._hash[row] = consumed.known_hash(item_id)
        self._matrix[row] = vector
        self._live[row] = available
        if self._ann is not None:
            if available:
                self._ann.put(row, self._matrix[row])
            else:
                self._ann.drop(row)
        elif self.ann_threshold is not None and len(self._row) >= self.ann_threshold:
            self._build_ann()

    def _build_ann(self) -> None:
        ann = ApproximateIndex(self.dimension)
        rows = np.flatnonzero(self._live[: self._used]).astype(np.int64)
        if rows.size:
            ann.put_many(rows, self._matrix[rows])
        self._ann = ann

    @property
    def approximate(self) -> bool:
        return self._ann is not None

    def _next_row(self) -> int:
        if self._used == len(self._ids):
            grow = len(self._ids)
            self._matrix = np.vstack([self._matrix,
                                      np.zeros((grow, self.dimension), dtype=np.float32)])
            self._live = np.concatenate([self._live, np.zeros(grow, dtype=bool)])
            self._hash = np.concatenate([self._hash, np.zeros(grow, dtype=np.uint32)])
            self._ids.extend([None] * grow)
        self._used += 1
        return self._used - 1

    def remove(self, item_id: str) -> None:
        self.version += 1
        row = self._row.pop(item_id, None)
        if row is not None:
            self._live[row] = False
            self._ids[row] = None
            self._free.append(row)
            if self._ann is not None:
                self._ann.drop(row)

    def vector(self, item_id: str) -> FloatArray | None:
        row = self._row.get(item_id)
        return None if row is None else self._matrix[row]

    def row(self, item_id: str) -> int | None:
        """``item_id``'s row (None: not held)."""
        return self._row.get(item_id)

    def ids_at(self, rows: Iterable[int]) -> list[str]:
        """The item ids held in ``rows`` (rows in use)."""
        ids = self._ids
        return [ids[r] for r in rows]  # type: ignore[misc]

    def hashes_at(self, rows: npt.NDArray[np.int64] | list[int]) -> npt.NDArray[np.uint32]:
        """The hashes (app.core.consumed) of the ids held in ``rows``."""
        hashed: npt.NDArray[np.uint32] = self._hash[rows]
        return hashed

    def live_at(self, rows: npt.NDArray[np.int64] | list[int]) -> npt.NDArray[np.bool_]:
        """Whether each of ``rows`` is present and in stock."""
        live: npt.NDArray[np.bool_] = self._live[rows]
        return live

    def at_rows(self, rows: npt.NDArray[np.int64] | list[int]) -> FloatArray:
        """The vectors in ``rows``, one per row."""
        picked: FloatArray = self._matrix[rows]
        return picked

    def vectors(self, item_ids: Iterable[str]) -> FloatArray:
        return self.at_rows([self._row[i] for i in item_ids])

    def softmax_set(self, targets: Iterable[str], negatives: int, seed: int
                    ) -> tuple[FloatArray, npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """What a sampled softmax over the catalogue runs on: the vectors of every live
        item when there are at most ``negatives`` of them, else of the targets and
        ``negatives`` live items drawn uniformly (seeded); the row of each target among
        them, and which targets are in the catalogue at all (the others have no row)."""
        wanted = [self._row.get(t) for t in targets]
        known = np.array([r is not None for r in wanted], dtype=bool)
        target_rows = np.array([r for r in wanted if r is not None], dtype=np.int64)
        live = np.flatnonzero(self._live[: self._used]).astype(np.int64)
        if len(live) > negatives:
            live = np.random.default_rng(seed).choice(live, negatives, replace=False)
        rows = np.union1d(live, target_rows)
        matrix: FloatArray = self._matrix[rows]
        return matrix, np.searchsorted(rows, target_rows).astype(np.int64), known

    def search(self, query: FloatArray, k: int, exclude: set[str] | None = None,
               scores: FloatArray | None = None) -> list[tuple[str, float]]:
        """The k live items with the highest inner product with ``query`` (approximately,
        above the threshold: the graph is asked for k plus the excluded items plus a margin,
        and the exact search answers if too few survive the filters). ``scores``: every
        row's inner product with ``query``, when already known (``scores_many``, for this
        version of the index)."""
        if self._ann is not None:
            found = self._search_ann(query, k, exclude or set())
            if found is not None:
                return found
        return self.exact_search(query, k, exclude, scores)

    def scores_many(self, queries: FloatArray) -> FloatArray | None:
        """Each row's inner product with each of ``queries`` ([len(queries), rows]), in one
        matrix product: what ``search`` then needs for each query, for this version of the
        index (a matrix-vector product per query reads the whole matrix each time). None
        above the approximate search's threshold (its graph answers instead)."""
        if self._ann is not None or not len(queries):
            return None
        found: FloatArray = queries.astype(np.float32, copy=False) @ self._matrix[:self._used].T
        return found

    def _search_ann(self, query: FloatArray, k: int, exclude: set[str]
                    ) -> list[tuple[str, float]] | None:
        assert self._ann is not None
        rows = self._ann.search(query, k + len(exclude) + ANN_MARGIN)
        rows = rows[self._live[rows]]
        scores = self._matrix[rows] @ query
        order = np.argsort(-scores)
        out: list[tuple[str, float]] = []
        for position in order:
            item = self._ids[rows[position]]
            if item is None or item in exclude:
                continue
            out.append((item, float(scores[position])))
            if len(out) == k:
                return out
        return None if len(self._ann) > len(out) + len(exclude) else out

    def search_rows(self, query: FloatArray, k: int, exclude: set[str] | None = None,
                    scores: FloatArray | None = None) -> npt.NDArray[np.int64]:
        """``search``'s answer as rows (``ids_at``, ``hashes_at``), best first."""
        if self._ann is not None:
            found = self._search_ann(query, k, exclude or set())
            if found is not None:
                return np.array([self._row[i] for i, _ in found], dtype=np.int64)
        return self._exact_top(query, k, exclude, scores)[0]

    def exact_search(self, query: FloatArray, k: int, exclude: set[str] | None = None,
                     scores: FloatArray | None = None) -> list[tuple[str, float]]:
        """The exact k live items with the highest inner product with ``query`` (``scores``:
        each row's, when already known)."""
        top, values = self._exact_top(query, k, exclude, scores)
        ids = self._ids
        return [(ids[i], v) for i, v in zip(top.tolist(), values.tolist(), strict=True)]

    def _exact_top(self, query: FloatArray, k: int, exclude: set[str] | None,
                   scores: FloatArray | None
                   ) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """The rows of ``exact_search``'s answer and their inner products, best first."""
        used = self._used
        scores = self._matrix[:used] @ query if scores is None or len(scores) != used \
            else scores.copy()
        scores[~self._live[:used]] = -np.inf
        if exclude:
            row = self._row.get
            rows = [r for r in map(row, exclude) if r is not None]
            scores[rows] = -np.inf
        k = min(k, used)
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        top = (-scores).argpartition(k - 1)[:k]
        top = top[(-scores[top]).argsort()].astype(np.int64, copy=False)
        values: FloatArray = scores[top]
        if values[-1] == -np.inf:   # fewer live, unexcluded items than asked for
            finite = values != -np.inf
            top, values = top[finite], values[finite]
        return top, values
