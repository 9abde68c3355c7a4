"""Catalogue items as the recommender sees them: cleaned, described in one text for the
encoder, and held with their vectors in an in-memory index for retrieval."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from app.contract.records import ItemUpsert

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


class VectorIndex:
    """Exact inner-product search over unit vectors, updated in place: upsert, remove, mark
    out of stock. Rows are reused after removal; the matrix grows by doubling."""

    def __init__(self, dimension: int, capacity: int = 1024) -> None:
        self.dimension = dimension
        self._matrix = np.zeros((capacity, dimension), dtype=np.float32)
        self._live = np.zeros(capacity, dtype=bool)       # present and in stock
        self._ids: list[str | None] = [None] * capacity
        self._row: dict[str, int] = {}
        self._free: list[int] = []
        self._used = 0

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def upsert(self, item_id: str, vector: FloatArray, available: bool = True) -> None:
        row = self._row.get(item_id)
        if row is None:
            row = self._free.pop() if self._free else self._next_row()
            self._row[item_id] = row
            self._ids[row] = item_id
        self._matrix[row] = vector
        self._live[row] = available

    def _next_row(self) -> int:
        if self._used == len(self._ids):
            grow = len(self._ids)
            self._matrix = np.vstack([self._matrix,
                                      np.zeros((grow, self.dimension), dtype=np.float32)])
            self._live = np.concatenate([self._live, np.zeros(grow, dtype=bool)])
            self._ids.extend([None] * grow)
        self._used += 1
        return self._used - 1

    def remove(self, item_id: str) -> None:
        row = self._row.pop(item_id, None)
        if row is not None:
            self._live[row] = False
            self._ids[row] = None
            self._free.append(row)

    def vector(self, item_id: str) -> FloatArray | None:
        row = self._row.get(item_id)
        return None if row is None else self._matrix[row]

    def vectors(self, item_ids: Iterable[str]) -> FloatArray:
        rows = [self._row[i] for i in item_ids]
        picked: FloatArray = self._matrix[rows]
        return picked

    def search(self, query: FloatArray, k: int, exclude: set[str] | None = None
               ) -> list[tuple[str, float]]:
        """The k live items with the highest inner product with ``query``."""
        scores = self._matrix[: self._used] @ query
        scores = np.where(self._live[: self._used], scores, -np.inf)
        if exclude:
            for item in exclude:
                row = self._row.get(item)
                if row is not None and row < self._used:
                    scores[row] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [(str(self._ids[i]), float(scores[i])) for i in top]
