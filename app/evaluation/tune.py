"""`streamrec tune`: fine-tune the semantic score's projection W1 on logged behaviour.

The behaviour is a MovieLens split's stream (each user's last rating withheld, as in the
replay): it is folded through the worker's own state fold, and every event gives a pair
(the user's interest vector just before it, the item it touched). :func:`app.core.tuning.fit`
learns the projection; ``evaluate`` scores the split's targets with and without it in the
in-process stand-in of the replay (app.evaluation.offline: the same recommender, no
broker); ``publish`` puts it on the models topic as the learning variant's head, which
every worker serves without a restart and the trainer trains on from.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.core.catalogue import VectorIndex
from app.core.ranking import FEATURES, RankerParams
from app.core.recommender import Catalogue, Recommender
from app.core.state import interest_of
from app.core.tuning import TuneConfig, as_projection, fit, loss
from app.core.versions import (
    HEAD,
    ModelVersion,
    encode_projection,
    encode_version,
    projection_key,
)
from app.encoder.runtime import Encoder, FloatArray
from app.evaluation.offline import catalogue_of, folded, simulate
from app.evaluation.report import _score, without_history
from app.evaluation.split import Split
from app.settings import Settings
from app.tools import read_models, send_models


def behaviour(split: Split, index: VectorIndex, dimension: int
              ) -> tuple[FloatArray, np.ndarray, FloatArray, list[str]]:
    """(interest before each event [n, d], the event's item row [n], item vectors, ids)."""
    ids = [item for item in split.items if item in index]
    row = {item: n for n, item in enumerate(ids)}
    items = index.vectors(ids).astype(np.float32)
    users: list[FloatArray] = []
    targets: list[int] = []
    for rating, before, _ in folded(split, index, dimension):
        unit = interest_of(before, dimension).unit() if before.interest else None
        if unit is not None and rating.item_id in row:
            users.append(unit)
            targets.append(row[rating.item_id])
    return (np.array(users, dtype=np.float32), np.array(targets, dtype=np.int64), items, ids)


def _maker(params: RankerParams) -> Callable[[Catalogue], Recommender]:
    def make(catalogue: Catalogue) -> Recommender:
        return Recommender(catalogue, params=params)
    return make


def projection_id(w1: FloatArray) -> str:
    return hashlib.blake2b(encode_projection(w1), digest_size=6).hexdigest()


def run_tune(split: Split, encoder: Encoder, config: TuneConfig, evaluate: bool, out: Path,
             say: Callable[[str], None]) -> dict[str, Any]:
    started = time.monotonic()
    catalogue = catalogue_of(split, encoder)
    users, targets, items, _ = behaviour(split, catalogue.index, encoder.dimension)
    say(f"{len(targets):,} (interest, next item) pairs over {len(items):,} items "
        f"({time.monotonic() - started:.0f}s)")
    holdout = np.arange(len(targets)) % 20 == 0          # 5% to watch for overfitting
    identity = np.eye(encoder.dimension, dtype=np.float32)
    before = loss(identity, users[holdout], targets[holdout], items, config)

    def progress(epoch: int, training: float) -> None:
        say(f"epoch {epoch}/{config.epochs}: training loss {training:.3f} "
            f"({time.monotonic() - started:.0f}s)")

    m = fit(users[~holdout], targets[~holdout], items, config, progress)
    after = loss(m, users[holdout], targets[holdout], items, config)
    w1 = as_projection(m)
    name = projection_id(w1)
    result: dict[str, Any] = {
        "dataset": split.dataset, "projection": name, "pairs": len(targets),
        "config": asdict(config), "held_out_loss": {"identity": before, "tuned": after},
        "seconds": round(time.monotonic() - started, 1),
    }
    say(f"held-out loss: {before:.3f} untuned -> {after:.3f} tuned")
    if evaluate:
        users_all = list(split.targets)
        for label, params in (("untuned", RankerParams()),
                              ("tuned", replace(RankerParams(), w1=w1)),
                              ("untuned, semantic only", replace(RankerParams(), covisit=0.0)),
                              ("tuned, semantic only",
                               replace(RankerParams(), w1=w1, covisit=0.0))):
            say(f"scoring the split's targets: {label}")
            lists = simulate(split, encoder, _maker(params), catalogue)
            kept, _ = without_history(lists, split)
            row = _score(kept, split, users_all).row()
            result.setdefault("stand_in", {})[label] = {
                k: row[k] for k in ("NDCG@10", "HR@10", "HR@50", "MRR")}
            say(f"  NDCG@10 {row['NDCG@10']:.4f}  HR@10 {row['HR@10']:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"projection-{name}.npy", w1)
    (out / f"projection-{name}.json").write_text(json.dumps(result, indent=2))
    return result


async def publish(settings: Settings, w1: FloatArray, name: str, note: str) -> ModelVersion:
    """The projection and a head that serves it (the current head's weights, or the
    defaults) on the models topic."""
    current = (await read_models(settings)).head
    weights = current.weights if current is not None else tuple(
        float(getattr(RankerParams(), feature)) for feature in FEATURES)
    head = ModelVersion(
        version=f"tuned-{name}", generation=current.generation if current else 0,
        weights=weights, bias=current.bias if current else 0.0,
        steps=current.steps if current else 0, seen=current.seen if current else 0,
        published_at=int(time.time() * 1000), origin="tune", note=note, projection=name)
    await send_models(settings, [(projection_key(name), encode_projection(w1)),
                                 (HEAD, encode_version(head))])
    return head
