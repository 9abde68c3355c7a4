"""The behaviour model's item side over a catalogue, and the recommender using it (numpy
only: no torch, no onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.behaviour import FLOOR, ItemSpace
from app.core.ranking import RankerParams
from app.core.recommender import Recommender, Request, UserView
from tests.unit.test_recommender import VECTORS, catalogue

pytestmark = pytest.mark.unit
D = 4   # the model's width here (the catalogue's vectors are 4-d too)


def space(projection: bool = True) -> ItemSpace:
    known = ["alien", "aliens", "toy-story", "cars", "titanic"]   # predator, notebook: new
    table = np.zeros((len(known) + 1, D), dtype=np.float32)
    for row, item in enumerate(known, start=1):
        table[row] = VECTORS[item] * 3
    return ItemSpace(table, known, np.eye(D, dtype=np.float32) if projection else None)


def test_items_the_model_never_saw_are_scored_from_their_text() -> None:
    items = space()
    items.sync(7, list(VECTORS), lambda item: VECTORS.get(item))
    assert set(items.ids) == set(VECTORS)
    assert items.from_text == 2
    np.testing.assert_allclose(items.matrix[items.position["notebook"]], VECTORS["notebook"])
    without = space(projection=False)
    without.sync(7, list(VECTORS), lambda item: VECTORS.get(item))
    assert "notebook" not in without.ids
    lift = without.log_lift(np.ones((1, D), dtype=np.float32))[0]
    assert without.lookup(lift, ["notebook"]).tolist() == [FLOOR]


def test_the_model_s_scale_multiplies_its_feature_not_its_picks() -> None:
    items = space()
    items.sync(1, list(VECTORS), lambda item: VECTORS.get(item))
    lift = items.log_lift(VECTORS["cars"][None, :] * 2)[0]
    ids = ["cars", "titanic", "unknown"]
    plain, top = items.lookup(lift, ids), items.top(lift, 3)
    items.scale = 0.5
    np.testing.assert_allclose(items.lookup(lift, ids), plain * 0.5)
    assert items.top(lift, 3) == top
    items.scale = 0.0
    assert items.lookup(lift, ids).tolist() == [0.0, 0.0, 0.0]


def test_the_log_lift_is_a_log_probability_against_a_uniform_pick() -> None:
    items = space()
    items.sync(1, list(VECTORS), lambda item: VECTORS.get(item))
    lift = items.log_lift(np.stack([VECTORS["cars"], VECTORS["titanic"]]) * 2)
    probabilities = np.exp(lift) / len(items.ids)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert items.top(lift[0], 2) == ["cars", "toy-story"]
    assert items.top(lift[1], 1) == ["titanic"]


def test_the_model_proposes_candidates_and_weighs_in_the_ranking() -> None:
    """A user whose text interest says sci-fi but whose behaviour vector says kids: with
    the model, kids films come in as candidates and rise; without it (or with the source
    off), the lists are exactly as before."""
    plain = Recommender(catalogue(), per_source=2)
    served = Recommender(catalogue(), per_source=2, behaviour=space(),
                         params=RankerParams(sequence=1.0))
    user = UserView(interest=VECTORS["alien"], recent=[("alien", "view", 1.0)],
                    purchased=set(), behaviour=VECTORS["cars"] * 3)
    before, counts = plain.recommend(user, Request(k=3), now=0)
    assert counts["sequence"] == 0
    after, counts = served.recommend(user, Request(k=3), now=0)
    assert counts["sequence"] == 2
    assert after[0].item_id in {"cars", "toy-story"}
    assert {i.item_id for i in before} != {i.item_id for i in after}
    no_vector = UserView(interest=VECTORS["alien"], recent=[("alien", "view", 1.0)],
                         purchased=set())
    assert served.recommend(no_vector, Request(k=3), now=0)[0] == plain.recommend(
        no_vector, Request(k=3), now=0)[0]
    off = Recommender(catalogue(), per_source=2, behaviour=space(),
                      sources=frozenset({"encoder", "covisit", "popular"}))
    assert off.recommend(user, Request(k=3), now=0)[0] == before


def test_a_pick_the_model_drove_names_the_history_item_nearest_it_in_the_model() -> None:
    """Only the model proposes and scores: its pick is explained by the user's history
    item nearest it in the model's item space, never as "popular"."""
    served = Recommender(catalogue(), per_source=3, behaviour=space(),
                         sources=frozenset({"sequence"}),
                         params=RankerParams(semantic=0.0, popularity=0.0, sequence=1.0))
    user = UserView(interest=None, recent=[("titanic", "view", 1.0), ("cars", "purchase", 2.0)],
                    purchased=set(), behaviour=VECTORS["toy-story"] * 3)
    items, counts = served.recommend(user, Request(k=1), now=0)
    assert counts["sequence"] == 3
    assert items[0].item_id == "toy-story"
    assert items[0].explanation.kind == "history"
    assert items[0].explanation.item_id == "cars"
    assert "bought" in items[0].explanation.text or "purchased" in items[0].explanation.text


def test_nearest_skips_items_without_a_row() -> None:
    items = space(projection=False)
    items.sync(1, list(VECTORS), lambda item: VECTORS.get(item))
    assert items.nearest(["notebook", "aliens"], ["predator", "alien", "cars"]) == [
        None, "alien"]
    assert items.nearest(["aliens"], ["predator"]) == [None]


@pytest.mark.parametrize("served_at", [0.0, 0.5, 1.0])
def test_a_list_ranked_at_other_scales_equals_the_list_served_at_them(served_at: float
                                                                       ) -> None:
    """Ranked at the scales of the online choice (app.core.weighing), each alternative is
    the list the recommender serves once its model is at that scale: the served scale's
    own alternative included, and from a served scale of 0 (the feature then adds 0)."""
    items = space()
    recommender = Recommender(catalogue(), per_source=3, behaviour=items,
                              params=RankerParams(sequence=1.0))
    user = UserView(interest=VECTORS["alien"], recent=[("alien", "view", 1.0)],
                    purchased=set(), behaviour=VECTORS["cars"] * 3)
    scales = (0.0, 0.25, 0.5, 1.0, 3.0)
    items.scale = served_at
    ranking = recommender.rank(user, Request(k=6), now=0, alternatives=scales,
                               alternatives_k=4)
    assert list(ranking.alternatives) == list(scales)
    lists = set()
    for scale in scales:
        items.scale = scale
        served = [i.item_id for i in recommender.recommend(user, Request(k=4), now=0)[0]]
        assert ranking.alternatives[scale] == served
        lists.add(tuple(served))
    assert len(lists) > 1     # the scale does reorder this user's list
    plain = Recommender(catalogue(), per_source=3)
    assert plain.rank(user, Request(k=4), now=0, alternatives=scales).alternatives == {}
