"""The behaviour model's weight in the ranker, chosen online from what users do next.

A served model's ``scale`` multiplies its ``sequence`` feature (app.core.behaviour). One
fixed weight does not suit every model: on the MovieLens-1M replay the stream trainer's
young models (validation NDCG@10 0.04-0.08 on their own) cost 0.013 NDCG@10 online at the
weight that suits a model trained on the whole stream, and gained 0.0008 at a quarter of
it (BENCHMARKS.md). `streamrec model tune` chooses a scale offline, on the validation
targets of a model trained from a dataset; a model published by `streamrec train
--stream` every few minutes has no such choice. So a worker chooses the scale itself, on
the evidence the replay scores lists by:

- for a sampled share of its lists, the same candidates are ranked at each scale of a grid
  too (``Recommender.rank(alternatives=...)``: the score and the diversity pass again, no
  candidate search), and each scale's top ``k`` items are remembered for the user;
- the user's next item event (another item than the one the list followed: a view and
  then its purchase is one step) scores each remembered list: DCG@k, ``1 / log2(rank +
  1)`` when the item is in its top ``k``, else 0;
- once at least ``min_samples`` lists are scored, the best scale over the newest
  ``window`` samples is served when it beats the served one by more than two paired
  standard errors (ties: the smaller scale); checked every ``every`` new samples.

The evidence outlives a model version: a stream trainer publishes a warm-started model
every few minutes, a few thousand lists apart, and consecutive versions weigh alike; the
window lets the evidence follow a model as it grows. A new version starts at the scale its
artefact chose (`streamrec model tune`) when it carries one, else where the last one was
served; the first at ``current``'s initial value: a worker gives 0 when the model is one
candidate source among others (a young model's score cost 0.04 NDCG@10 online on the
MovieLens-1M replay's users served before the choice moved away from 1: it is a candidate
source only until its score pays) and 1 when it is the only one (alone, it ranks the same
at every scale above 0, so the choice never moves it).
Kept in memory by each worker, over its own users (a restarted worker starts again).
Where users act on what they are shown, the served scale's list has the advantage of being
seen, so the evidence favours the served scale: the choice moves only on a clear
difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# multiples of the ranker's `sequence` weight (1.25): 0 (a candidate source only) to 3
SCALES: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)


def gain(items: Sequence[str], item: str, k: int) -> float:
    """DCG@k of one next item in a list: 1 / log2(rank + 1) in the top ``k``, else 0."""
    for rank, candidate in enumerate(items[:k], start=1):
        if candidate == item:
            return 1.0 / math.log2(rank + 1)
    return 0.0


@dataclass(frozen=True)
class Pending:
    after: str                        # the item the list followed
    lists: tuple[tuple[str, ...], ...]  # the top items at each scale, ``scales`` order


@dataclass
class ScaleChooser:
    """The scale a worker serves its behaviour model at (see the module's description)."""

    k: int = 10
    min_samples: int = 500
    every: int = 100
    window: int = 5_000        # samples the choice rests on (the newest)
    users: int = 20_000        # users with a remembered list (the newest)
    grid: tuple[float, ...] = SCALES
    version: str | None = None
    current: float = 1.0       # the scale served (initially: the first untuned model's)
    samples: int = 0           # lists scored (since the grid last changed)
    switches: int = 0
    # the grid and the served scale: the columns of the evidence (``_grow``)
    scales: tuple[float, ...] = field(default=(), init=False)
    _gains: npt.NDArray[np.float32] = field(init=False, repr=False)
    _since: int = field(default=0, repr=False)
    _pending: dict[str, Pending] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._grow()

    def _grow(self) -> None:
        """Evidence over the grid and the served scale, afresh when those change."""
        scales = tuple(sorted({*self.grid, self.current}))
        if scales != self.scales:
            self.scales = scales
            self._gains = np.zeros((self.window, len(scales)), dtype=np.float32)
            self.samples = self._since = 0
            self._pending.clear()

    def serve(self, version: str | None, tuned: float | None) -> float:
        """A model is served (None: none): the scale to serve it at, ``tuned`` (its
        artefact's own choice) when given, else the one served last. The evidence is kept
        (unless the grid changes: a tuned scale off it joins it)."""
        if version == self.version:
            return self.current
        self.version = version
        if tuned is not None:
            self.current = tuned
            self._grow()
        return self.current

    def remember(self, user: str, after: str, lists: Mapping[float, Sequence[str]]) -> None:
        """The top items of a user's list at each of ``scales`` (``after``: the item
        the list followed), scored by the user's next item."""
        if self.version is None or any(scale not in lists for scale in self.scales):
            return
        self._pending.pop(user, None)
        if len(self._pending) >= self.users:
            del self._pending[next(iter(self._pending))]
        self._pending[user] = Pending(after, tuple(tuple(lists[s][:self.k])
                                                   for s in self.scales))

    def waiting(self, user: str) -> bool:
        return user in self._pending

    def observe(self, user: str, item: str) -> bool:
        """A user's item event: scores the list remembered for them when ``item`` is their
        next item (True then)."""
        found = self._pending.get(user)
        if found is None or item == found.after:
            return False
        del self._pending[user]
        self._gains[self.samples % self.window] = [gain(items, item, self.k)
                                                   for items in found.lists]
        self.samples += 1
        self._since += 1
        return True

    def decide(self) -> float | None:
        """The scale to serve from now on, when the evidence (checked every ``every`` new
        samples) says another beats the served one; None to keep it."""
        if self._since < self.every or self.samples < self.min_samples:
            return None
        self._since = 0
        gains = self._gains[:min(self.samples, self.window)].astype(np.float64)
        means = gains.mean(axis=0)
        best = int(np.flatnonzero(means == means.max())[0])   # ties: the smallest scale
        served = self.scales.index(self.current)
        if best == served:
            return None
        difference = gains[:, best] - gains[:, served]
        stderr = float(difference.std(ddof=1)) / math.sqrt(len(difference))
        if float(difference.mean()) <= 2 * stderr:
            return None
        self.current = self.scales[best]
        self.switches += 1
        return self.current

    def summary(self) -> dict[str, object]:
        """What the choice rests on (GET /model)."""
        kept = min(self.samples, self.window)
        means = self._gains[:kept].mean(axis=0) if kept else np.zeros(len(self.scales))
        return {"version": self.version, "scale": self.current, "samples": self.samples,
                "switches": self.switches,
                "ndcg@k_by_scale": {f"{s:g}": round(float(m), 5)
                                    for s, m in zip(self.scales, means, strict=True)}}
