"""The behaviour model's item side, over the catalogue a worker serves (pure numpy).

A served model scores an item for a user by the dot product of the user vector (the ONNX
graph's output for the user's stored sequence, app.encoder.behaviour) with the item's row.
Rows come from the model's item table for the items it was trained on, and, for an item it
has never seen, from the item's text vector through the model's learnt text projection
(the id part of its embedding is unknown, so 0): a new item can be scored, and reach
lists, before anyone touched it.

What the ranker reads is the item's log-probability under the model's softmax over the
catalogue, relative to a uniform pick: ``log(N * p(item))`` (0 for an item as likely as
any; ~+5 for the model's favourites on MovieLens), one scale across users and catalogues,
times the model's own ``scale`` (chosen per model on its validation targets when it was
trained, app.train.weight: a weak model weighs less in the ranker than a strong one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
FLOOR = -20.0   # the feature of an item the model cannot score (no row)


@dataclass
class ItemSpace:
    """The model's rows for every catalogue item, rebuilt when the catalogue changes."""

    table: FloatArray                       # (vocabulary + 1, dim); row 0 padding
    vocabulary: Sequence[str]               # item ids of rows 1..
    projection: FloatArray | None = None    # (text_dim, dim): text vector -> row
    ids: list[str] = field(default_factory=list)
    matrix: FloatArray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    position: dict[str, int] = field(default_factory=dict)
    built_for: int = -1
    from_text: int = 0                      # catalogue items scored from their text only
    scale: float = 1.0                      # multiplies the feature (the model's weight)

    def __post_init__(self) -> None:
        self._row = {item: n + 1 for n, item in enumerate(self.vocabulary)}

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def sync(self, version: int, item_ids: Sequence[str],
             text_vector: Callable[[str], FloatArray | None]) -> None:
        """Rows for ``item_ids`` (the catalogue at ``version``): the model's own row, else the
        projected text vector, else none (the item is not scored)."""
        if version == self.built_for:
            return
        ids: list[str] = []
        rows: list[FloatArray] = []
        from_text = 0
        for item in item_ids:
            row = self._row.get(item)
            if row is not None:
                ids.append(item)
                rows.append(self.table[row])
                continue
            vector = text_vector(item) if self.projection is not None else None
            if vector is not None and self.projection is not None \
                    and vector.shape[0] == self.projection.shape[0]:
                ids.append(item)
                rows.append((vector @ self.projection).astype(np.float32))
                from_text += 1
        self.ids = ids
        self.matrix = (np.stack(rows).astype(np.float32) if rows
                       else np.zeros((0, self.dim), dtype=np.float32))
        self.position = {item: n for n, item in enumerate(ids)}
        self.built_for = version
        self.from_text = from_text

    def log_lift(self, users: FloatArray) -> FloatArray:
        """``log(N * p(item))`` of every catalogue row for each user vector (users x N)."""
        scores = users.astype(np.float32) @ self.matrix.T
        if not scores.shape[1]:
            return scores
        top = scores.max(axis=1, keepdims=True)
        log_norm = top + np.log(np.exp(scores - top).sum(axis=1, keepdims=True))
        lift: FloatArray = (scores - log_norm + np.log(scores.shape[1])).astype(np.float32)
        return lift

    def lookup(self, lift: FloatArray, item_ids: Sequence[str], scaled: bool = True
               ) -> FloatArray:
        """One user's ``log_lift`` row at ``item_ids`` (FLOOR for an item without a row),
        times ``scale`` (unless not ``scaled``): the ranker's ``sequence`` feature."""
        at = np.fromiter((self.position.get(i, -1) for i in item_ids), dtype=np.int64,
                         count=len(item_ids))
        out = np.full(len(item_ids), FLOOR, dtype=np.float32)
        known = at >= 0
        out[known] = np.maximum(lift[at[known]], FLOOR)
        if scaled and self.scale != 1.0:
            out *= np.float32(self.scale)
        return out

    def top(self, lift: FloatArray, k: int) -> list[str]:
        """The ``k`` items the model ranks highest for one user, best first."""
        if k <= 0 or not len(lift):
            return []
        k = min(k, len(lift))
        best = np.argpartition(-lift, k - 1)[:k]
        return [self.ids[n] for n in best[np.argsort(-lift[best], kind="stable")]]

    def nearest(self, item_ids: Sequence[str], history: Sequence[str]) -> list[str | None]:
        """For each of ``item_ids``, the item of ``history`` whose row is most similar to its
        own (cosine, in the model's item space): what a pick the model drove is explained
        by. None for an item without a row, or when no history item has one."""
        known = [item for item in dict.fromkeys(history) if item in self.position]
        if not known or not len(item_ids):
            return [None] * len(item_ids)
        past = self.matrix[[self.position[i] for i in known]]
        past = past / np.maximum(np.linalg.norm(past, axis=1, keepdims=True), 1e-12)
        at = [self.position.get(i, -1) for i in item_ids]
        rows = self.matrix[[max(a, 0) for a in at]]
        best = (rows @ past.T).argmax(axis=1)
        return [known[int(b)] if a >= 0 else None for a, b in zip(at, best, strict=True)]
