"""The behaviour model's weight in the ranker, chosen for each model on its own validation
targets and shipped inside its artefact.

A fixed weight is one model's measurement: the ranker's default `sequence` weight (1.25)
was swept on an 80-epoch ML-1M model (0.178 NDCG@10 on its own), where 0.3 lost 0.01
NDCG@10 on validation; a model trained on other data, for fewer epochs or from a
young stream is a weaker or stronger signal beside co-visitation. So after training, the
validation stream (the split's stream without each user's last rating, the rating the model
was validated on and never trained on) is folded through the worker's state fold and
co-visitation learning in process, every user is asked for a list at the end of it with the
model's user vector at each candidate scale of the model's log-lift, and the scale whose
lists score the best NDCG@10 on those held-back ratings is kept when it beats scale 1 by
more than two paired standard errors (the lists without the model are scored too, for the
record). The choice is ``ranker.json`` in the artefact (part of its content hash, so a
re-tuned model is a new version), read by ``SequenceModel.load`` into the item space
(``ItemSpace.scale``), which multiplies the ``sequence`` feature: the ranker's ``sequence``
weight times the scale is the model's weight. An artefact without ``ranker.json`` is
served at scale 1.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.behaviour import FloatArray
from app.core.ranking import RankerParams
from app.core.recommender import Request
from app.core.serving import learn_sequence, user_view
from app.core.state import UserState
from app.encoder.behaviour import RANKER_FILE, SequenceModel
from app.encoder.runtime import Encoder
from app.evaluation.offline import catalogue_of, folded
from app.evaluation.report import _error, _per_user_ndcg
from app.evaluation.split import Split, leave_last_out
from app.settings import Settings
from app.train.export import content_hash

# multiples of the ranker's default `sequence` weight (1.25): weights 0 .. 3.75 (the 80-epoch
# ML-1M model chose 1.5 from a grid that ended there, so the grid goes on past it)
SCALES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
USER_CHUNK = 256          # users per onnxruntime call for their user vectors

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True)
class Choice:
    scale: float                       # what the model's log-lift is multiplied by
    validation: dict[float, float]     # scale -> NDCG@10 on the validation targets
    without_model: float               # NDCG@10 of the ranker with no model, same users
    over_without: tuple[float, float]  # the chosen scale's NDCG@10 minus that, stderr
    gain: float                        # the best scale's NDCG@10 minus scale 1's
    stderr: float                      # the paired standard error of that gain
    users: int
    seconds: float

    @property
    def weight(self) -> float:
        """The ranker's ``sequence`` weight the scale amounts to."""
        return self.scale * RankerParams().sequence

    def as_dict(self) -> dict[str, Any]:
        return {"sequence_scale": self.scale, "sequence_weight": self.weight,
                "chosen_by": "NDCG@10 of the ranker's end-of-stream lists on each user's "
                             "last streamed rating (the model's validation targets); "
                             "scale 1 unless the best beats it by two paired standard errors",
                "validation_ndcg@10": {f"{s:g}": round(v, 5)
                                       for s, v in self.validation.items()},
                "validation_ndcg@10_without_model": round(self.without_model, 5),
                "chosen_minus_without_model": round(self.over_without[0], 5),
                "chosen_minus_without_model_stderr": round(self.over_without[1], 5),
                "best_minus_scale_1": round(self.gain, 5),
                "best_minus_scale_1_stderr": round(self.stderr, 5),
                "users": self.users, "seconds": round(self.seconds, 1)}


def paired(better: npt.NDArray[np.float64], base: npt.NDArray[np.float64]
           ) -> tuple[float, float]:
    """The mean per-user difference ``better - base`` and its standard error."""
    difference = better - base
    return float(difference.mean()) if len(difference) else 0.0, _error(difference)


def best_scale(per_user: dict[float, npt.NDArray[np.float64]], default: float = 1.0
               ) -> tuple[float, float, float]:
    """The scale to serve, from each scale's per-user NDCG@10 (the same users in the same
    order): the best one when it beats ``default`` by more than two paired standard errors
    (ties go to the smaller scale), else ``default``; also the best's gain over ``default``
    and that gain's standard error. On a few thousand users neighbouring scales differ by
    less than their noise, so without evidence the weight stays where it was measured."""
    best = max(sorted(per_user), key=lambda scale: float(per_user[scale].mean()))
    base = per_user.get(default)
    if base is None:
        return best, 0.0, 0.0
    gain, stderr = paired(per_user[best], base)
    return (best if gain > 2 * stderr else default), gain, stderr


def validation_split(split: Split) -> Split:
    """``split``'s stream with each user's last rating held back as the target (what
    `streamrec train` validates on)."""
    held = leave_last_out(split.stream, split.items)
    return dataclasses.replace(held, dataset=split.dataset, catalogue=split.catalogue,
                               genres=split.genres)


def choose_scale(split: Split, model: SequenceModel, settings: Settings,
                 scales: Sequence[float] = SCALES, progress: Progress | None = None,
                 k: int = 50) -> Choice:
    """Fold ``split``'s validation stream, ask every validation user at its end at each of
    ``scales`` and keep the best (``best_scale``)."""
    from app.worker.pipeline import make_recommender

    started = time.perf_counter()
    tell = progress or (lambda stage, done, total: None)
    held = validation_split(split)
    encoder = Encoder(settings.model_dir())
    catalogue = catalogue_of(held, encoder)
    recommender = make_recommender(settings, encoder.dimension, model, catalogue)
    states: dict[str, UserState] = {}
    total = len(held.stream)
    for n, (rating, before, result) in enumerate(folded(held, catalogue.index,
                                                        encoder.dimension)):
        learn_sequence(recommender, before, result.applied)
        states[rating.user_id] = result.state
        if n % 5_000 == 0:
            tell("folding the validation stream", n, total)
    tell("folding the validation stream", total, total)
    users = sorted(u for u in held.targets if u in states)
    vectors: dict[str, FloatArray | None] = {}
    for at in range(0, len(users), USER_CHUNK):
        chunk = users[at:at + USER_CHUNK]
        vectors.update(zip(chunk, model.user_vectors([states[u].sequence for u in chunk]),
                           strict=True))
    space = model.space
    per_user: dict[float, npt.NDArray[np.float64]] = {}
    without: npt.NDArray[np.float64] = np.zeros(0)
    request = Request(k=k)
    rounds = [*scales, None]           # None: the ranker without the model
    for step, scale in enumerate(rounds):
        space.scale = 1.0 if scale is None else scale
        recommender.behaviour = None if scale is None else space
        lists = {}
        for n, user in enumerate(users):
            view = user_view(states[user], encoder.dimension, encoder.encode_query, (),
                             None if scale is None else vectors[user])
            items, _ = recommender.recommend(view, request, now=states[user].last_ts)
            lists[user] = [i.item_id for i in items]
            if n % 500 == 0:
                tell("asking at each scale", step * len(users) + n, len(rounds) * len(users))
        ndcg = _per_user_ndcg(lists, held, users)
        if scale is None:
            without = ndcg
        else:
            per_user[scale] = ndcg
    tell("asking at each scale", len(rounds) * len(users), len(rounds) * len(users))
    chosen, gain, stderr = best_scale(per_user)
    space.scale = chosen
    recommender.behaviour = space
    return Choice(chosen,
                  {s: float(v.mean()) if len(v) else 0.0 for s, v in per_user.items()},
                  float(without.mean()) if len(without) else 0.0,
                  paired(per_user[chosen], without), gain, stderr, len(users),
                  time.perf_counter() - started)


def write_choice(folder: Path, choice: Choice) -> dict[str, Any]:
    """Put ``choice`` in the artefact at ``folder`` (``ranker.json``) and give the artefact
    its new version (the content hash covers the file); the new manifest."""
    (folder / RANKER_FILE).write_text(json.dumps(choice.as_dict(), indent=1) + "\n")
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    names = [name for name in manifest["files"] if name != RANKER_FILE] + [RANKER_FILE]
    manifest["files"] = names
    manifest["version"] = content_hash(folder, names)
    manifest["ranker"] = choice.as_dict()
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
