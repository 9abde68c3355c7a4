"""The epsilon slot explores a bounded, reproducible share of lists."""

from __future__ import annotations

import pytest

from app.core.exploration import Exploration, explore

RANKED = [f"i{n}" for n in range(60)]


def test_off_by_default_and_exact_when_off() -> None:
    shown, explored = explore(RANKED, 10, Exploration(), "rec-1")
    assert shown == RANKED[:10]
    assert explored is None


def test_a_share_of_lists_gives_one_slot_to_an_item_from_just_below() -> None:
    policy = Exploration(epsilon=0.2, slot=9, pool=40)
    explored = 0
    for n in range(5000):
        shown, item = explore(RANKED, 10, policy, f"rec-{n}")
        assert shown[:9] == RANKED[:9]                 # the top never moves
        if item is not None:
            explored += 1
            assert shown[9] == item
            assert item in RANKED[10:50]
        else:
            assert shown == RANKED[:10]
    assert abs(explored / 5000 - 0.2) < 0.02
    assert explore(RANKED, 10, policy, "rec-7") == explore(RANKED, 10, policy, "rec-7")


def test_short_lists_and_bad_policies() -> None:
    assert explore(RANKED[:10], 10, Exploration(epsilon=1.0), "r") == (RANKED[:10], None)
    shown, item = explore([*RANKED[:5], "x"], 5, Exploration(epsilon=1.0), "r")
    assert item == "x"
    assert shown == [*RANKED[:4], "x"]                # slot 9 clamped to the last one
    with pytest.raises(ValueError, match="epsilon"):
        Exploration(epsilon=1.5)
    with pytest.raises(ValueError, match="first"):
        Exploration(slot=0)


def test_an_explored_ranking_renumbers_and_keeps_each_items_features() -> None:
    from app.contract.records import Explanation, RecommendedItem
    from app.core.exploration import explored
    from app.core.recommender import Ranking

    items = [RecommendedItem(item_id=i, rank=n + 1, score=1.0 / (n + 1),
                             explanation=Explanation(kind="popular", text="popular"))
             for n, i in enumerate(RANKED)]
    ranking = Ranking(items, {"popular": 50}, [(float(n),) for n in range(len(RANKED))])
    out = explored(ranking, 10, Exploration(epsilon=1.0, slot=9, pool=40), "rec-1")
    assert [i.rank for i in out.items] == list(range(1, 11))
    assert [i.item_id for i in out.items[:9]] == RANKED[:9]
    chosen = out.items[9].item_id
    assert chosen in RANKED[10:50]
    assert out.features[9] == (float(RANKED.index(chosen)),)
    plain = explored(ranking, 10, Exploration(epsilon=0.0), "rec-1")
    assert [i.item_id for i in plain.items] == RANKED[:10]
