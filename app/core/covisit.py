"""Streaming item-to-item co-visitation: items that the same users touch close together.

When a user touches item i, every item j among their last ``window`` items gains
weight / distance on the edge j -> i (and ``backward`` times that on i -> j): the closer in
the sequence, the stronger. Directed by default: what users touch *after* j predicts the
next item better than what they touched before it (MovieLens-1M stand-in, NDCG@10
0.104 -> 0.118). Each item keeps at most ``max_neighbours`` neighbours (pruned to the
strongest when it holds twice that), so memory is bounded by items x 2 x max_neighbours
edges. A pruned edge starts again from 0 when it recurs: too small a bound loses what
follows an item in the long run (co-visitation alone on MovieLens-1M: NDCG@10 0.132 with
100, 0.136 with 300 or more).

Item ids are interned to integers as they are first seen; each item's edges are kept as
numpy arrays of those integers and strengths, so a user's candidates are summed with numpy
rather than item by item, and no sorted copy has to be rebuilt after every change.

Each item's visits (how often it was observed as the next item) are counted too, for the
*lift* of an edge: its strength divided by the visits of both ends, what the edge says
beyond the two items' popularity (:meth:`CoVisitation.lift`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import numpy.typing as npt

from app.core import consumed

Ids = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Hashes = npt.NDArray[np.uint32]
# up to this many interned ids per edge summed, a pass over the id space is the cheaper way
# (measured on this 2-core VM: a bincount over 3,900 ids ~25 us, over a million ~280 us,
# against ~50 us to add 10,000 edges into the scratch row with np.add.at)
DENSE_PER_EDGE = 32


@dataclass(frozen=True)
class Neighbourhood:
    """The items next to a user's recent ones: each target's summed score and the recent
    item that contributed most to it (for the explanation), strongest target first."""

    names: Sequence[str]    # the graph's interned item names ...
    index: dict[str, int]   # ... and their ids
    targets: Ids            # interned ids, ascending
    totals: Floats          # aligned with targets
    best: Ids               # aligned with targets: the strongest contributor's position ...
    contributors: list[str]  # ... in this list of the recent items that contributed
    order: Ids              # positions in targets, strongest total first
    hashes: Hashes          # per interned id, its name's hash (app.core.consumed)

    def ranked(self, limit: int | None = None) -> list[str]:
        """Target names, strongest first (the first ``limit``)."""
        return [self.names[t] for t in self.targets[self.order[:limit]]]

    def ranked_ids(self, limit: int | None = None) -> Ids:
        """Target ids, strongest first (the first ``limit``)."""
        ranked: Ids = self.targets[self.order[:limit]]
        return ranked

    def hashes_of(self, ids: Ids) -> Hashes:
        """The hashes (app.core.consumed) of the names of interned ``ids``."""
        hashed: Hashes = self.hashes[ids]
        return hashed

    def names_of(self, ids: Ids) -> list[str]:
        names = self.names
        return [names[t] for t in ids.tolist()]

    def lookup(self, items: Sequence[str], ids: Ids | None = None
               ) -> tuple[Floats, list[str | None]]:
        """Scores (0 when not a target) and strongest sources (None) of ``items`` (whose
        interned ids are ``ids``, when already known)."""
        if ids is None:
            ids = np.fromiter((self.index.get(i, -1) for i in items), dtype=np.int64,
                              count=len(items))
        if not len(self.targets):
            return np.zeros(len(ids)), [None] * len(ids)
        at = np.minimum(self.targets.searchsorted(ids), len(self.targets) - 1)
        hit = self.targets[at] == ids
        scores: Floats = np.where(hit, self.totals[at], 0.0)
        contributors = self.contributors
        return scores, [contributors[b] if h else None
                        for b, h in zip(self.best[at].tolist(), hit.tolist(), strict=True)]

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class _Out:
    """One item's outgoing edges: targets (interned ids) and strengths, in slots. The map
    from target to slot is built when an edge is first added: an item whose edges were only
    ever replaced (the global statistics a worker follows) holds its two arrays alone,
    ~2 KB for 100 neighbours instead of ~10 KB."""

    size: int = 0   # edges held: the first ``size`` of ``ids`` and ``strengths``
    ids: Ids = field(default_factory=lambda: np.zeros(8, dtype=np.int64))
    strengths: Floats = field(default_factory=lambda: np.zeros(8, dtype=np.float64))
    _slots: dict[int, int] | None = None   # target id -> slot, once an edge is added

    def add(self, target: int, strength: float) -> int:
        """Strengthen the edge to ``target``; the number of edges now held."""
        slots = self._slots
        if slots is None:
            slots = self._slots = {t: slot for slot, t in enumerate(self.ids[:self.size]
                                                                    .tolist())}
        slot = slots.get(target)
        if slot is None:
            slot = slots[target] = self.size
            self.size += 1
            if slot == len(self.ids):
                self.ids = np.concatenate([self.ids, np.zeros_like(self.ids)])
                self.strengths = np.concatenate([self.strengths,
                                                 np.zeros_like(self.strengths)])
            self.ids[slot] = target
            self.strengths[slot] = strength
        else:
            self.strengths[slot] += strength
        return self.size

    def keep_strongest(self, k: int) -> None:
        n = self.size
        keep = np.sort(np.argpartition(-self.strengths[:n], k - 1)[:k])
        self.ids, self.strengths = self.ids[keep].copy(), self.strengths[keep].copy()
        self.size = len(keep)
        self._slots = {int(t): slot for slot, t in enumerate(self.ids)}

    def strongest(self, k: int) -> tuple[Ids, Floats]:
        """The ``k`` strongest edges (unordered)."""
        n = self.size
        if n <= k:
            return self.ids[:n], self.strengths[:n]
        # (methods, not np.argpartition: the same call without numpy's Python dispatch,
        # ~20 of these per list)
        keep = (-self.strengths[:n]).argpartition(k - 1)[:k]
        return self.ids[keep], self.strengths[keep]


@dataclass
class CoVisitation:
    window: int = 10
    max_neighbours: int = 100
    backward: float = 0.0  # weight of the edge from an item back to what preceded it
    # interned item names: id -> name and name -> id
    names: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    out: dict[str, _Out] = field(default_factory=dict)
    visits: Floats = field(default_factory=lambda: np.zeros(64))  # per interned id
    # per interned id: its name's hash (app.core.consumed), to leave out consumed targets
    hashes: Hashes = field(default_factory=lambda: np.zeros(64, dtype=np.uint32))
    _scratch: Floats = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    def _row(self) -> Floats:
        """A zeroed scratch row over the id space, for a caller that zeroes what it wrote."""
        if len(self._scratch) < len(self.names):
            self._scratch = np.zeros(2 * len(self.names), dtype=np.float64)
        return self._scratch

    def _small(self, edges: int) -> bool:
        """Whether the id space is small next to ``edges`` (then one pass over it is cheaper
        than following the edges alone: ~25 us for 3,900 ids, ~280 us for a million)."""
        return len(self.names) <= DENSE_PER_EDGE * edges

    def _summed(self, targets: Ids, weights: Floats, at: Ids) -> Floats:
        """``weights`` summed per id of ``targets``, read at ids ``at``: one bincount over
        the id space while it is small, else added into the scratch row and cleared after,
        so the cost follows the edges, not the catalogue's size."""
        if self._small(len(targets)):
            dense = np.bincount(targets, weights=weights,
                                minlength=len(self.names)).astype(np.float64, copy=False)
            return dense[at]
        row = self._row()
        np.add.at(row, targets, weights)
        summed: Floats = row[at]          # (a copy: fancy indexing)
        row[targets] = 0.0
        return summed

    def observe(self, history: Sequence[str], item: str, weight: float = 1.0) -> None:
        """Record that ``item`` follows ``history`` (the user's items, oldest first)."""
        visited = self._id(item)   # (first: interning may grow ``visits``)
        self.visits[visited] += 1.0
        if self.backward:
            for source, target, strength in self.increments(history, item, weight):
                self._add(source, target, strength)
            return
        # the same edges as ``increments`` gives, added without a generator and a lookup of
        # the target per edge (a backlog learns ~10 edges per event)
        out = self.out
        bound = 2 * self.max_neighbours
        for distance, previous in enumerate(reversed(history[-self.window:]), start=1):
            if previous == item:
                continue
            edges = out.get(previous)
            if edges is None:
                edges = out[previous] = _Out()
            if edges.add(visited, weight / distance) > bound:
                edges.keep_strongest(self.max_neighbours)

    def increments(self, history: Sequence[str], item: str, weight: float = 1.0
                   ) -> Iterator[tuple[str, str, float]]:
        """The edges (source, target, strength added) that ``item`` following ``history``
        strengthens: what :meth:`observe` adds, for a caller that sums them elsewhere (the
        global item statistics, app.core.itemstats)."""
        for distance, previous in enumerate(reversed(history[-self.window:]), start=1):
            if previous == item:
                continue
            strength = weight / distance
            yield previous, item, strength
            if self.backward:
                yield item, previous, strength * self.backward

    def merge(self, edges: Mapping[str, Mapping[str, float]], visits: Mapping[str, float]
              ) -> None:
        """Add summed increments (source -> target -> strength; visits per item), with the
        same bound as :meth:`observe`: an item's edges are pruned to the strongest
        ``max_neighbours`` once it holds twice that."""
        for item, count in visits.items():
            visited = self._id(item)   # (first: interning may grow ``visits``)
            self.visits[visited] += count
        for source, targets in edges.items():
            for target, strength in targets.items():
                self._add(source, target, strength)

    def replace(self, item: str, targets: Sequence[str], strengths: Sequence[float],
                visits: float) -> None:
        """Set ``item``'s outgoing edges and visits to the given ones (an item's entry of
        the global graph, which every worker follows): its edges before are dropped."""
        visited = self._id(item)   # (first: interning may grow ``visits``)
        self.visits[visited] = visits
        if not targets:
            self.out.pop(item, None)
            return
        index = self.index
        found = list(map(index.get, targets))   # (one dict lookup per target: the hot
        if None in found:                         # path of every followed entry)
            found = [self._id(t) if n is None else n for t, n in zip(targets, found,
                                                                       strict=True)]
        ids = np.array(found, dtype=np.int64)
        self.out[item] = _Out(len(ids), ids, np.asarray(strengths, dtype=np.float64))

    def visited(self, item: str) -> float:
        """How often ``item`` was observed as the next item."""
        found = self.index.get(item)
        return 0.0 if found is None else float(self.visits[found])

    def _id(self, item: str) -> int:
        found = self.index.get(item)
        if found is None:
            found = self.index[item] = len(self.names)
            self.names.append(item)
            if found == len(self.visits):
                self.visits = np.concatenate([self.visits, np.zeros_like(self.visits)])
            if found >= len(self.hashes):
                self.hashes = np.concatenate([self.hashes, np.zeros(
                    max(found + 1 - len(self.hashes), len(self.hashes)), dtype=np.uint32)])
            self.hashes[found] = consumed.known_hash(item)
        return found

    def _add(self, source: str, target: str, strength: float) -> None:
        edges = self.out.get(source)
        if edges is None:
            edges = self.out[source] = _Out()
        if edges.add(self._id(target), strength) > 2 * self.max_neighbours:
            edges.keep_strongest(self.max_neighbours)

    @property
    def edges(self) -> dict[str, dict[str, float]]:
        """Every edge, as {source: {target: strength}} (for inspection and tests)."""
        return {source: {self.names[int(t)]: float(s)
                         for t, s in zip(*edges.strongest(edges.size), strict=True)}
                for source, edges in self.out.items()}

    def neighbours(self, item: str, k: int) -> list[tuple[str, float]]:
        """``item``'s k strongest neighbours, strongest first."""
        edges = self.out.get(item)
        if edges is None:
            return []
        ids, strengths = edges.strongest(k)
        ranked = sorted(zip(ids.tolist(), strengths.tolist(), strict=True),
                        key=lambda kv: kv[1], reverse=True)
        return [(self.names[t], s) for t, s in ranked]

    def ranked(self, item: str, k: int) -> tuple[list[str], list[float]]:
        """``item``'s k strongest neighbours and their strengths, strongest first, as two
        lists (an entry of the global graph: sorted with numpy, not pair by pair)."""
        edges = self.out.get(item)
        if edges is None:
            return [], []
        ids, strengths = edges.strongest(k)
        order = np.argsort(-strengths, kind="stable")
        names = self.names
        return [names[t] for t in ids[order].tolist()], strengths[order].tolist()

    def interned(self, items: Sequence[str]) -> Ids:
        """The interned ids of ``items`` (-1 for an item the graph has not seen)."""
        return np.fromiter(map(self.index.get, items, repeat(-1, len(items))),
                           dtype=np.int64, count=len(items))

    def strengths(self, sources: Sequence[str], items: Sequence[str],
                  ids: Ids | None = None) -> Floats:
        """The stored strength of each edge source -> item ([len(items), len(sources)]; 0
        where there is none): what each recent item alone says of each candidate. ``ids``:
        the items' interned ids, when already known. Each source's edges are scattered into
        a scratch row over the id space and gathered back (no sort), then the row is
        cleared: the cost is the edges and items, not the graph's size."""
        out = np.zeros((len(items), len(sources)), dtype=np.float64)
        if not items:
            return out
        ids = self.interned(items) if ids is None else ids
        known = ids >= 0
        rows = ids[known]
        scratch = self._row()
        for column, source in enumerate(sources):
            edges = self.out.get(source)
            if edges is None:
                continue
            n = edges.size
            targets = edges.ids[:n]
            scratch[targets] = edges.strengths[:n]
            out[known, column] = scratch[rows]
            scratch[targets] = 0.0
        return out

    def lift(self, sources: Sequence[str], items: Sequence[str], ids: Ids | None = None
             ) -> Floats:
        """What the user's ``sources`` together say of each of ``items`` beyond popularity:
        sum over sources j of strength(j -> i) / (visits(j) * visits(i)) (0 for an item no
        source reaches; ``ids``: the items' interned ids, when already known). Raw
        co-visitation favours the items everyone visits; divided by both ends' visits, an
        edge counts for how much more often the two follow each other than their
        popularity alone would make them (MovieLens-1M stand-in, with the learnt weights:
        NDCG@10 0.1473 -> 0.1591 with this term at weight 2, scaled to the list's
        maximum). Every source's edges are summed in one pass (``_summed``)."""
        ids = self.interned(items) if ids is None else ids
        out = np.zeros(len(ids), dtype=np.float64)
        targets: list[Ids] = []
        weights: list[Floats] = []
        lengths: list[int] = []
        visited: list[int] = []   # each source's interned id (-1: never visited)
        edges_of, id_of = self.out.get, self.index.get
        for source in sources:
            edges = edges_of(source)
            if edges is None:
                continue
            n = edges.size
            targets.append(edges.ids[:n])
            weights.append(edges.strengths[:n])
            lengths.append(n)
            visited.append(id_of(source, -1))
        known = ids >= 0
        if not targets or not known.any():
            return out
        at = np.asarray(visited, dtype=np.int64)
        # each edge divided by its source's visits (at least 1; 1 for a source never visited)
        divisors = np.where(at >= 0, np.maximum(self.visits[at], 1.0), 1.0)
        rows = ids[known]
        summed = self._summed(np.concatenate(targets),
                              np.concatenate(weights) / np.repeat(divisors, lengths), rows)
        out[known] = summed / np.maximum(self.visits[rows], 1.0)
        return out

    def candidates(self, recent: Iterable[tuple[str, float]], k: int) -> Neighbourhood:
        """Items next to the user's recent ones (each contributing its ``k`` strongest
        neighbours, times its weight): summed scores and strongest contributors.
        ``recent`` pairs items with weights."""
        ids: list[Ids] = []
        contributions: list[Floats] = []
        lengths: list[int] = []
        contributors: list[str] = []
        edges_of = self.out.get
        for source, weight in recent:
            edges = edges_of(source)
            if edges is None:
                continue
            neighbour_ids, strengths = edges.strongest(k)
            ids.append(neighbour_ids)
            contributions.append(strengths * weight)
            lengths.append(len(neighbour_ids))
            contributors.append(source)
        if not ids:
            empty = np.zeros(0, dtype=np.int64)
            return Neighbourhood(self.names, self.index, empty, np.zeros(0), empty, [], empty,
                                 self.hashes)
        flat = np.concatenate(ids)
        contribution = np.concatenate(contributions)
        source_of = np.repeat(np.arange(len(contributors), dtype=np.int64), lengths)
        # the distinct targets, ascending, and per target its strongest contribution's
        # recent item (the earliest on ties)
        if self._small(len(flat)):   # over the id space: no sort of the edges
            space = len(self.names)
            highest = np.full(space, -np.inf)
            np.maximum.at(highest, flat, contribution)
            targets = np.flatnonzero(highest > -np.inf)
            top = contribution == highest[flat]
            earliest = np.full(space, len(contributors), dtype=np.int64)
            np.minimum.at(earliest, flat[top], source_of[top])
            best = earliest[targets]
            totals = np.bincount(flat, weights=contribution, minlength=space
                                 ).astype(np.float64, copy=False)[targets]
        else:   # one sort of the edges gives both
            strongest = (-contribution).argsort(kind="stable")
            targets, firsts = np.unique(flat[strongest], return_index=True)
            best = source_of[strongest[firsts]]
            totals = self._summed(flat, contribution, targets)
        order = (-totals).argsort(kind="stable")
        return Neighbourhood(self.names, self.index, targets, totals, best, contributors,
                             order, self.hashes)
