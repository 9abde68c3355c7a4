"""Fine-tuning the projection: a known structure in the behaviour is learnt."""

from __future__ import annotations

import numpy as np

from app.core.ranking import RankerParams, project
from app.core.tuning import TuneConfig, as_projection, fit, loss


def test_the_projection_learns_which_item_follows_which() -> None:
    rng = np.random.default_rng(0)
    d, n = 16, 40
    items = rng.normal(size=(n, d)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    follows = rng.permutation(n)                 # after item i, users take follows[i]
    before = rng.integers(0, n, size=4000)
    users = items[before] + 0.05 * rng.normal(size=(4000, d)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    targets = follows[before]
    config = TuneConfig(epochs=30, learning_rate=2.0, temperature=0.1, batch=256)
    identity = np.eye(d, dtype=np.float32)
    m = fit(users, targets, items, config)
    assert loss(m, users, targets, items, config) < 0.5 * loss(identity, users, targets,
                                                                   items, config)
    # served as W1 of cos(W1 u, r): the item that follows ranks first for most users
    w1 = as_projection(m)
    params = RankerParams(w1=w1)
    scores = project(users[:500], params.w1, None) @ items.T
    assert (scores.argmax(axis=1) == targets[:500]).mean() > 0.9
    untuned = (users[:500] @ items.T).argmax(axis=1)
    assert (untuned == targets[:500]).mean() < 0.2


def test_behaviour_pairs_the_interest_before_each_event_with_its_item() -> None:
    from app.core.catalogue import VectorIndex
    from app.data.movielens import Rating
    from app.evaluation.split import leave_last_out
    from app.evaluation.tune import behaviour

    index = VectorIndex(4)
    for n, item in enumerate("abcd"):
        index.upsert(item, np.eye(4, dtype=np.float32)[n])
    ratings = [Rating(0, "u", "a", 3.0, 1), Rating(1, "u", "b", 3.0, 2),
               Rating(2, "u", "c", 3.0, 3), Rating(3, "u", "d", 3.0, 4)]
    split = leave_last_out(ratings, list("abcd"))
    users, targets, items, ids = behaviour(split, index, 4)
    assert ids == list("abcd")
    assert targets.tolist() == [1, 2]            # b after a, c after a and b; d withheld
    assert users.shape == (2, 4)
    assert users[0].argmax() == 0                 # before b: interest is a
    assert np.allclose(np.linalg.norm(users, axis=1), 1.0)
    assert np.array_equal(items, np.eye(4, dtype=np.float32))
