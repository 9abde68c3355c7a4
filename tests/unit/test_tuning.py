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


def test_online_steps_learn_the_same_structure_one_mini_batch_at_a_time() -> None:
    from app.core.catalogue import VectorIndex
    from app.core.tuning import OnlineConfig, online_step

    rng = np.random.default_rng(1)
    d, n = 16, 40
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(d)
    for row, vector in enumerate(vectors):
        index.upsert(f"i{row}", vector)
    follows = rng.permutation(n)
    config = OnlineConfig(learning_rate=0.5, negatives=16)   # a sample of the catalogue
    m = np.eye(d, dtype=np.float32)
    losses = []
    for step_number in range(1500):
        before = rng.integers(0, n, size=32)
        users = vectors[before] + 0.05 * rng.normal(size=(32, d)).astype(np.float32)
        users /= np.linalg.norm(users, axis=1, keepdims=True)
        items, rows, known = index.softmax_set([f"i{t}" for t in follows[before]],
                                               config.negatives, seed=step_number)
        assert known.all()
        assert len(items) <= 16 + 32
        assert np.array_equal(items[rows], vectors[follows[before]])   # targets included
        m, batch_loss = online_step(m, users, rows, items, config)
        losses.append(batch_loss)
        # the step is clipped: no single mini-batch moves M by more than the rate
    assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:50])
    before = rng.integers(0, n, size=500)
    users = vectors[before]
    scores = project(users, as_projection(m), None) @ vectors.T
    assert (scores.argmax(axis=1) == follows[before]).mean() > 0.9
    assert ((users @ vectors.T).argmax(axis=1) == follows[before]).mean() < 0.2


def test_an_online_step_is_clipped_and_leaves_m_alone_without_pairs() -> None:
    from app.core.tuning import OnlineConfig, online_step

    rng = np.random.default_rng(2)
    items = rng.normal(size=(8, 4)).astype(np.float32)
    users = rng.normal(size=(3, 4)).astype(np.float32) * 100   # a huge gradient
    m = np.eye(4, dtype=np.float32)
    config = OnlineConfig(learning_rate=0.1, max_gradient=1.0)
    stepped, _ = online_step(m, users, np.array([0, 1, 2]), items, config)
    assert np.linalg.norm(stepped - m) <= 0.1 + 1e-5
    same, loss_value = online_step(m, users[:0], np.array([], dtype=np.int64), items, config)
    assert same is m
    assert loss_value == 0.0


def test_the_softmax_set_is_the_whole_catalogue_when_small_and_skips_unknown_items() -> None:
    from app.core.catalogue import VectorIndex

    index = VectorIndex(2)
    for n in range(5):
        index.upsert(f"i{n}", np.array([n, 1.0], dtype=np.float32))
    index.upsert("gone", np.array([9.0, 9.0], dtype=np.float32), available=False)
    items, rows, known = index.softmax_set(["i3", "unknown", "i0"], negatives=10, seed=0)
    assert known.tolist() == [True, False, True]
    assert len(items) == 5                        # every live item; out of stock left out
    assert items[rows].tolist() == [[3.0, 1.0], [0.0, 1.0]]
    items, rows, _ = index.softmax_set(["gone"], negatives=10, seed=0)
    assert items[rows].tolist() == [[9.0, 9.0]]   # a target is always there
