"""The recommender on a small catalogue with obvious answers, and the user-state fold that
feeds it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from app.contract.records import ItemUpsert, Purchase, Search, View
from app.core import consumed
from app.core.catalogue import VectorIndex, clean_label, entry, item_text
from app.core.covisit import CoVisitation
from app.core.learning import FEATURES
from app.core.profile import DAY_MS
from app.core.ranking import RankerParams
from app.core.recommender import (
    HOUR_MS,
    Catalogue,
    Popularity,
    Recommender,
    Request,
    Searched,
    Trending,
    UserView,
    presence,
    with_sources,
)
from app.core.serving import purchases
from app.core.state import EventContext, StateCodec, UserState, apply_batch, event_fold, interest_of

D = 4


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


VECTORS = {
    "alien": unit(1, 0.1, 0, 0), "aliens": unit(1, 0, 0.1, 0), "predator": unit(0.9, 0.3, 0, 0),
    "toy-story": unit(0, 1, 0.1, 0), "cars": unit(0.1, 1, 0, 0),
    "titanic": unit(0, 0, 1, 0.1), "notebook": unit(0, 0.1, 1, 0),
}
CATEGORY = {"alien": "sci-fi", "aliens": "sci-fi", "predator": "action", "toy-story": "kids",
            "cars": "kids", "titanic": "romance", "notebook": "romance"}


def catalogue() -> Catalogue:
    cat = Catalogue(D)
    for item, vector in VECTORS.items():
        upsert = ItemUpsert(v=1, event_id=f"c-{item}", item_id=item, ts=0,
                            title=item.replace("-", " ").title(), category=CATEGORY[item])
        cat.upsert(entry(upsert, vector, "test"))
    return cat


def test_item_text_and_labels() -> None:
    item = ItemUpsert(v=1, event_id="e", item_id="i", ts=0, title=" Alien ",
                      category="  Sci-Fi  Films ", brand="Fox", description="In space.",
                      attributes={"year": 1979, "dvd": True})
    assert item_text(item) == "Alien. Sci-Fi Films. Fox. In space.. year: 1979"
    assert clean_label(item.category) == "sci-fi films"
    assert entry(item, unit(1, 0, 0, 0), "m").category == "sci-fi films"


def test_index_updates_in_place() -> None:
    index = VectorIndex(D, capacity=2)
    for item, vector in VECTORS.items():
        index.upsert(item, vector)
    assert [i for i, _ in index.search(unit(1, 0, 0, 0), 2)] == ["alien", "aliens"]
    index.upsert("alien", VECTORS["alien"], available=False)  # out of stock
    index.remove("aliens")
    assert index.search(unit(1, 0, 0, 0), 1)[0][0] == "predator"
    assert "aliens" not in index
    assert len(index) == 6


def test_a_sci_fi_fan_gets_sci_fi_with_a_reason() -> None:
    rec = Recommender(catalogue())
    user = UserView(interest=VECTORS["alien"], recent=[("alien", "view", 1.0)],
                    purchased=set())
    items, counts = rec.recommend(user, Request(k=3), now=0)
    assert items[0].item_id in {"aliens", "alien", "predator"}
    assert counts["encoder"] > 0
    first = items[0]
    assert first.rank == 1
    assert first.explanation.kind in {"history", "covisit"}
    assert "Alien" in first.explanation.text


def test_a_batch_searched_at_once_gets_the_lists_each_user_would_alone() -> None:
    """search_many: one matrix product for a batch's encoder searches, the same lists (with
    a projection W1 too); a search made before the catalogue changed is not used."""
    rng = np.random.default_rng(3)
    rec = Recommender(catalogue(), per_source=3)   # (the encoder's three nearest items)
    users = [UserView(interest=unit(*rng.standard_normal(D)), recent=[("alien", "view", 1.0)],
                      purchased=set(), consumed=consumed.add(b"", ["cars"]))
             for _ in range(6)] + [UserView(interest=None, recent=[], purchased=set())]
    projected = RankerParams(w1=rng.standard_normal((D, D)).astype(np.float32))
    for params in (None, projected):
        searched = rec.search_many(users, [params] * len(users))
        assert [s is None for s in searched] == [False] * 6 + [True]
        for user, found in zip(users, searched, strict=True):
            alone = rec.recommend(user, Request(k=5), now=0, params=params)[0]
            assert rec.recommend(user, Request(k=5), now=0, params=params,
                                 searched=found)[0] == alone
    rec.per_source = 2   # (the encoder's two nearest items are the candidates)
    kid = UserView(interest=unit(0, 1, 0.05, 0), recent=[], purchased=set())
    stale = rec.search_many([kid], [None])[0]
    assert isinstance(stale, Searched)
    rec.catalogue.upsert(entry(ItemUpsert(v=1, event_id="n", item_id="notebook", ts=0,
                                          title="Notebook", category="romance"),
                               unit(0, 1, 0.05, 0), "t"))   # moved next to the kid
    fresh = rec.recommend(kid, Request(k=1), now=0)[0]
    assert [i.item_id for i in fresh] == ["notebook"]
    assert rec.recommend(kid, Request(k=1), now=0, searched=stale)[0] == fresh


def test_purchased_out_of_stock_and_excluded_items_are_filtered() -> None:
    cat = catalogue()
    cat.upsert(entry(ItemUpsert(v=1, event_id="x", item_id="predator", ts=1, title="Predator",
                                category="action", in_stock=False), VECTORS["predator"], "t"))
    rec = Recommender(cat)
    user = UserView(interest=VECTORS["alien"], recent=[],
                    purchased={consumed.item_hash("aliens")})
    items, _ = rec.recommend(user, Request(k=7, exclude=frozenset({"alien"})), now=0)
    shown = {i.item_id for i in items}
    assert not shown & {"aliens", "predator", "alien"}
    kids_only, _ = rec.recommend(user, Request(k=7, allow_categories=frozenset({"kids"})), 0)
    assert {i.item_id for i in kids_only} == {"toy-story", "cars"}


def test_purchases_are_kept_as_hashes_and_never_shown_even_when_seen_items_are_asked() -> None:
    """4 bytes a purchase instead of its id; a state written before (ids) still blocks its
    purchases, and moves them to the hashes with its next event."""
    cat = catalogue()
    context = EventContext(item_vector=cat.index.vector, query_vectors={}, dimension=D)
    old = UserState(purchased=("aliens",))
    assert purchases(old) == {consumed.item_hash("aliens")}
    state = apply_batch(old, [View(v=1, event_id="v", user_id="u", ts=5, item_id="cars")], 8,
                        event_fold(context)).state
    assert state.purchased == ()
    assert purchases(state) == {consumed.item_hash("aliens")}
    state = apply_batch(state, [Purchase(v=1, event_id="p", user_id="u", ts=6, item_id="alien",
                                         price=1.0)], 8, event_fold(context)).state
    assert consumed.size(state.purchases) == 2
    view = UserView(interest=VECTORS["alien"], recent=[], purchased=purchases(state))
    for exclude_seen in (True, False):
        items, _ = Recommender(cat).recommend(view, Request(k=7, exclude_seen=exclude_seen),
                                              now=10)
        assert not {i.item_id for i in items} & {"alien", "aliens"}


def test_a_new_user_gets_popular_items() -> None:
    rec = Recommender(catalogue(), popularity=Popularity())
    for _ in range(5):
        rec.popularity.add("titanic", 1.0, 0)
    rec.popularity.add("cars", 1.0, 0)
    items, counts = rec.recommend(UserView(None, [], set()), Request(k=2), now=0)
    assert items[0].item_id == "titanic"
    assert items[0].explanation.kind == "popular"
    assert counts["popular"] == 2


def test_covisitation_brings_what_others_watched_next() -> None:
    graph = CoVisitation()
    for _ in range(3):
        graph.observe(["toy-story"], "titanic")  # other users: toy story, then titanic
    rec = Recommender(catalogue(), covisit=graph)
    user = UserView(interest=VECTORS["toy-story"], recent=[("toy-story", "view", 1.0)],
                    purchased=set())
    items, _ = rec.recommend(user, Request(k=3), now=0)
    titanic = next(i for i in items if i.item_id == "titanic")
    assert titanic.explanation.kind == "covisit"
    assert titanic.explanation.item_id == "toy-story"


def test_switched_off_sources_propose_nothing_and_score_nothing() -> None:
    graph = CoVisitation()
    for _ in range(3):
        graph.observe(["toy-story"], "titanic")
    user = UserView(interest=VECTORS["toy-story"], recent=[("toy-story", "view", 1.0)],
                    purchased=set())
    for sources, silent in ((frozenset({"covisit", "popular"}), "encoder"),
                            (frozenset({"encoder", "popular"}), "covisit")):
        rec = Recommender(catalogue(), covisit=graph, sources=sources,
                          params=with_sources(RankerParams(), sources))
        items, counts = rec.recommend(user, Request(k=3), now=0)
        assert counts[silent] == 0
        assert getattr(rec.params, "semantic" if silent == "encoder" else "covisit") == 0.0
        if silent == "covisit":
            assert all(i.explanation.kind != "covisit" for i in items)
        else:
            assert items[0].item_id == "titanic"   # co-visitation alone still finds it


def test_a_search_steers_the_interest_and_explains_itself() -> None:
    cat = catalogue()
    context = EventContext(item_vector=cat.index.vector,
                           query_vectors={"love story": VECTORS["notebook"]}, dimension=D)
    events = [
        View(v=1, event_id="1", user_id="u", ts=1000, item_id="alien"),
        Search(v=1, event_id="2", user_id="u", ts=2000, query="love story"),
        Purchase(v=1, event_id="3", user_id="u", ts=3000, item_id="titanic", price=5.0),
    ]
    state = apply_batch(UserState(), events, 64, event_fold(context)).state
    assert [r[0] for r in state.recent] == ["alien", "titanic"]
    assert state.purchases == consumed.add(b"", ["titanic"])
    assert state.query == "love story"
    direction = interest_of(state, D).unit()
    assert direction is not None
    assert direction @ VECTORS["notebook"] > direction @ VECTORS["alien"]
    view = UserView(direction, [(i, k, 1.0) for i, k, _ in state.recent], purchases(state),
                    ("love story", VECTORS["notebook"]))
    items, _ = Recommender(cat).recommend(view, Request(k=2), now=3000)
    assert items[0].item_id == "notebook"
    assert items[0].explanation.text == "matches your search 'love story'"
    assert "titanic" not in {i.item_id for i in items}


def test_user_state_stays_bounded() -> None:
    cat = catalogue()
    context = EventContext(item_vector=cat.index.vector, query_vectors={}, dimension=384)
    events = [Purchase(v=1, event_id=f"e{i}", user_id="u", ts=i, item_id=f"item-{i:06d}",
                       price=1.0) for i in range(2000)]
    state = apply_batch(UserState(), events, 128, event_fold(context)).state
    assert len(state.recent) == 50
    assert consumed.size(state.purchases) == 500
    assert len(state.consumed) == 2000 * 4
    assert len(state.sequence) == 200 * 6
    size = len(StateCodec(UserState).encode(state))
    assert size < 26_000, size  # documented bound (docs/operations.md): ~26 KB per user


def test_memory_regrown_from_stored_users_matches_live_learning() -> None:
    from app.core.serving import learn_segment_history, learn_sequence, rebuild_memory

    cat = catalogue()
    context = EventContext(item_vector=cat.index.vector, query_vectors={}, dimension=D)
    live = Recommender(cat)
    users = []
    segments = {"u1": ("age:25-34",), "u2": ("age:18-24", "gender:f"), "u3": ()}
    for user, items in {"u1": ["alien", "aliens", "predator"], "u2": ["cars", "toy-story"],
                        "u3": ["alien", "predator", "titanic"]}.items():
        state = UserState()
        for i, item in enumerate(items):  # one event per batch, as a live worker would see
            # u2's profile arrives after their first event: their history so far then counts
            known = segments[user] if user != "u2" or i > 0 else ()
            if user == "u2" and i == 1:
                learn_segment_history(live, state, segments[user])
            event = View(v=1, event_id=f"{user}-{i}", user_id=user, ts=1000 * i, item_id=item)
            result = apply_batch(state, [event], 64, event_fold(context))
            learn_sequence(live, state, result.applied, known)
            state = result.state
        users.append((state, segments[user]))
    regrown = Recommender(cat)
    assert rebuild_memory(regrown, users) == 3
    assert regrown.covisit.edges == live.covisit.edges
    assert regrown.popularity.top(5, 5000) == live.popularity.top(5, 5000)
    assert regrown.trending.top(5, 5000) == live.trending.top(5, 5000)
    assert set(regrown.segment_popularity) == {"age:25-34", "age:18-24", "gender:f"}
    for name, popular in live.segment_popularity.items():
        assert regrown.segment_popularity[name].top(5, 5000) == popular.top(5, 5000)


def test_a_new_user_with_a_known_profile_gets_what_their_segment_likes() -> None:
    from app.contract.records import UserProfile
    from app.core.profile import segments_of

    rec = Recommender(catalogue())
    for n in range(5):   # overall, sci-fi is what everybody watches ...
        rec.popularity.add("alien", 1.0, n)
        rec.popularity.add("aliens", 1.0, n)
    kids = segments_of(UserProfile(v=1, event_id="p", user_id="new", ts=0, age_band=" 1-12 ",
                                   occupation="K-12 student"))
    assert kids == ("age:1-12", "occupation:k-12 student")
    rec.learn_segments(kids, "toy-story", 1.0, 4)   # ... but children watch Toy Story
    rec.learn_segments(kids, "cars", 1.0, 4)
    anonymous = UserView(interest=None, recent=[], purchased=set())
    items, _ = rec.recommend(anonymous, Request(k=2), now=5)
    assert {i.item_id for i in items} == {"alien", "aliens"}
    assert items[0].explanation.text == "popular right now"
    child = UserView(interest=None, recent=[], purchased=set(), segments=kids)
    items, counts = rec.recommend(child, Request(k=3), now=5)
    ranked = [i.item_id for i in items]
    assert ranked[0] in {"toy-story", "cars"}
    assert {"toy-story", "cars"} <= set(ranked)   # MMR puts a sci-fi film between them
    assert items[0].explanation.text == "popular with people like you"
    assert counts["popular"] >= 2
    assert segments_of(None) == ()


def test_only_a_recent_search_is_embedded_for_the_view() -> None:
    from app.core.profile import DAY_MS
    from app.core.serving import user_view

    asked: list[str] = []

    def embed(text: str) -> np.ndarray:
        asked.append(text)
        return VECTORS["notebook"]

    fresh = UserState(query="love story", query_ts=0, last_ts=DAY_MS // 2)
    assert user_view(fresh, D, embed).query is not None
    stale = UserState(query="love story", query_ts=0, last_ts=2 * DAY_MS)
    assert user_view(stale, D, embed).query is None
    assert asked == ["love story"]  # the stale search was not embedded


def test_popularity_decays_ranks_and_keeps_its_top_without_scanning() -> None:
    day = DAY_MS
    pop = Popularity(half_life_ms=day)
    pop.add("old", 4.0, 0)
    pop.add("new", 1.0, 2 * day)
    assert pop.value("old", 2 * day) == pytest.approx(1.0)   # two half-lives later
    assert pop.values(["old", "new", "unknown"], 3 * day).tolist() == pytest.approx(
        [0.5, 0.5, 0.0])
    pop.add("new", 1.0, 3 * day)
    assert [i for i, _ in pop.top(2, 3 * day)] == ["new", "old"]
    # many items: the kept top is exactly the strongest, whatever the arrival order
    rng = np.random.default_rng(1)
    many = Popularity(half_life_ms=day)
    for n in rng.permutation(2000):
        many.add(f"i{n}", float(n), int(rng.integers(0, 10 * day)))
    at = 10 * day
    exact = sorted(many.scores, key=lambda i: many.value(i, at), reverse=True)[:50]
    assert [i for i, _ in many.top(50, at)] == exact
    # far-apart times rebase the scale instead of overflowing
    pop.add("later", 1.0, 10_000 * day)
    assert np.isfinite(pop.value("later", 10_000 * day))
    assert pop.value("later", 10_000 * day) == pytest.approx(1.0)
    assert pop.value("old", 10_000 * day) == 0.0
    # an item counted before the rescale and again after it: its old count rescaled too
    # (it was kept unscaled, 2 ** 256 times too strong, and overflowed float32)
    again = Popularity(half_life_ms=day)
    again.add("a", 1.0, 0)
    again.add("b", 1.0, 0)
    again.add("a", 1.0, 300 * day)
    assert again.values(["a", "b"], 300 * day).tolist() == pytest.approx([1.0, 0.0])
    # asked at a time older than what it counted (a user back after years): the counts as of
    # the newest one, not decayed backwards into growth (which overflowed float32)
    stale = Popularity(half_life_ms=day)
    stale.add("a", 1.0, 0)
    stale.add("b", 1.0, 200 * day)
    assert stale.values(["a", "b"], 0).tolist() == pytest.approx([0.0, 1.0])


def test_a_view_then_purchase_of_the_same_item_is_one_visit() -> None:
    from app.core.serving import learn_sequence, rebuild_memory

    cat = catalogue()
    context = EventContext(item_vector=cat.index.vector, query_vectors={}, dimension=D)
    live, state = Recommender(cat), UserState()
    for n, item in enumerate(["alien", "aliens", "predator"]):
        batch = [View(v=1, event_id=f"v{n}", user_id="u", ts=n, item_id=item),
                 Purchase(v=1, event_id=f"p{n}", user_id="u", ts=n, item_id=item, price=1.0)]
        result = apply_batch(state, batch, 64, event_fold(context))
        learn_sequence(live, state, result.applied)
        state = result.state
    assert live.covisit.edges["alien"] == {"aliens": 1.0, "predator": 0.5}  # not doubled
    assert live.popularity.value("alien", 2) == pytest.approx(1.0, rel=1e-3)
    regrown = Recommender(cat)
    rebuild_memory(regrown, [(state, ())])
    assert regrown.covisit.edges == live.covisit.edges


def test_what_co_visitation_learns_does_not_depend_on_how_events_were_batched() -> None:
    """A burst longer than the user's recent items (50) folded in one batch teaches the same
    edges as the same events one per batch: each item follows what came before it, never
    the items after it in the same batch (a large backlog batch taught those)."""
    from app.core.serving import learn_sequence

    rng = np.random.default_rng(5)
    cat = Catalogue(D)
    for n in range(80):
        vector = rng.standard_normal(D).astype(np.float32)
        cat.upsert(entry(ItemUpsert(v=1, event_id=f"c{n}", item_id=f"m{n}", ts=0,
                                    title=f"m{n}"), vector / np.linalg.norm(vector), "t"))
    context = EventContext(item_vector=cat.index.vector, query_vectors={}, dimension=D)
    items = [f"m{n}" for n in range(70)] + ["m3", "m71", "m72"]    # a repeat, too
    events = [View(v=1, event_id=f"e{n}", user_id="u", ts=n, item_id=item)
              for n, item in enumerate(items)]

    def learnt(batches: list[list[View]]) -> dict[str, dict[str, float]]:
        recommender, state = Recommender(cat), UserState()
        first = apply_batch(state, [View(v=1, event_id="x", user_id="u", ts=-1,
                                         item_id="m79")], 128, event_fold(context))
        learn_sequence(recommender, state, first.applied)
        state = first.state
        for batch in batches:
            result = apply_batch(state, batch, 128, event_fold(context))
            learn_sequence(recommender, state, result.applied)
            state = result.state
        return recommender.covisit.edges

    one_by_one = learnt([[e] for e in events])
    assert learnt([events]) == one_by_one
    assert learnt([events[:30], events[30:]]) == one_by_one
    assert "m0" not in one_by_one["m69"]          # nothing learnt backwards in time
    assert one_by_one["m79"]["m0"] == 1.0         # the item before the burst leads into it


def test_a_query_s_nearest_items_are_kept_until_the_catalogue_changes() -> None:
    """The kept answer is the searched one: blocked items left out, a margin too small
    falls back to searching, and a catalogue change is seen at once."""
    import app.core.recommender as module

    rng = np.random.default_rng(3)
    cat = Catalogue(8)
    for n in range(300):
        vector = rng.standard_normal(8).astype(np.float32)
        cat.upsert(entry(ItemUpsert(v=1, event_id=f"c{n}", item_id=f"i{n}", ts=0,
                                    title=f"i{n}"), vector / np.linalg.norm(vector), "t"))
    recommender = Recommender(cat)
    query = ("space films", unit(*rng.standard_normal(8)))

    def searched(blocked: set[str]) -> list[str]:
        return [item for item, _ in cat.index.search(query[1], 25, blocked)]

    for blocked in (set(), set(searched(set())[:10]), set(searched(set())[:5]) | {"i7"}):
        assert recommender._query_hits(query, 25, blocked) == searched(blocked)
    too_many = set(searched(set())[: 25 + module.QUERY_MARGIN])   # more than the margin
    assert recommender._query_hits(query, 25, too_many) == searched(too_many)
    best = searched(set())[0]
    cat.delete(best)
    assert best not in recommender._query_hits(query, 25, set())
    assert recommender._query_hits(query, 25, set()) == searched(set())


def test_each_newest_item_s_covisitation_is_a_feature_of_its_own() -> None:
    from app.core.ranking import COVISIT_RECENT, score

    graph = CoVisitation()
    graph.observe(["alien"], "aliens")          # alien -> aliens: 1
    graph.observe(["cars", "alien"], "titanic")  # alien -> titanic: 1, cars -> titanic: 0.5
    assert graph.strengths(["alien", "cars", "nothing"], ["aliens", "titanic", "cars"]
                           ).tolist() == [[1.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]
    # unseen items score 0 and the scratch row is clean again after each call
    assert graph.strengths(["cars"], ["unseen", "titanic", "aliens"]).tolist() == [
        [0.0], [0.5], [0.0]]
    rec = Recommender(catalogue(), covisit=graph)
    user = UserView(interest=VECTORS["alien"], purchased=set(),
                    recent=[("cars", "view", 0.5), ("alien", "view", 1.0)])   # newest last
    candidates, _ = rec.candidates(user, Request(k=5), now=0)
    scored = score(user.interest, candidates, RankerParams())
    titanic = candidates.item_ids.index("titanic")
    newest, second = (scored.features[name][titanic] for name in COVISIT_RECENT[:2])
    assert (newest, second) == pytest.approx((np.log1p(1.0), np.log1p(0.5)))
    # the documented defaults weigh each one: the score without them is less by exactly that
    params = RankerParams()
    plain = score(user.interest, replace(candidates, covisit_recent=None), params)
    added = sum(getattr(params, name) * scored.features[name] for name in COVISIT_RECENT)
    assert np.allclose(scored.total - plain.total, added)
    assert added[titanic] > 0


def test_the_lift_discounts_what_everyone_visits() -> None:
    """An edge's lift is its strength over both ends' visits: from a user's recent items,
    the niche item that follows them half the time lifts above the blockbuster that follows
    them as often but follows everything."""
    from app.core.ranking import score

    graph = CoVisitation()
    for n in range(8):                       # the blockbuster follows everything
        graph.observe([f"other{n}"], "titanic")
    graph.observe(["alien"], "titanic")
    graph.observe(["alien"], "aliens")       # aliens: visited once, after alien
    graph.observe([], "alien")
    assert graph.visits[graph.index["titanic"]] == 9
    assert graph.visits[graph.index["alien"]] == 1
    sources = ["alien", "cars"]              # cars: never visited
    items = ["titanic", "aliens", "unseen"]
    assert graph.strengths(sources, items)[:, 0].tolist() == [1.0, 1.0, 0.0]  # the same ...
    assert graph.lift(sources, items).tolist() == pytest.approx(
        [1.0 / 9.0, 1.0, 0.0])                                            # ... lifted apart
    assert graph.lift(sources, items, graph.interned(items)).tolist() == pytest.approx(
        [1.0 / 9.0, 1.0, 0.0])
    assert len(graph.lift(sources, [])) == 0
    # an item twice, and a known item no source reaches
    assert graph.lift(sources, ["titanic", "aliens", "titanic", "alien"]).tolist() == (
        pytest.approx([1.0 / 9.0, 1.0, 1.0 / 9.0, 0.0]))
    assert graph.lift(["nothing"], items).tolist() == [0.0, 0.0, 0.0]
    # the counts grow with the interned ids, whichever call interns them
    for n in range(300):
        graph.observe([f"new{n - 1}"] if n else [], f"new{n}")
    assert [graph.visits[graph.index[f"new{n}"]] for n in (0, 63, 64, 299)] == [1] * 4
    # in a ranking: a feature scaled to the list's maximum, weighed by the defaults
    rec = Recommender(catalogue(), covisit=graph)
    user = UserView(interest=VECTORS["alien"], purchased=set(),
                    recent=[("alien", "view", 1.0)])
    candidates, _ = rec.candidates(user, Request(k=5), now=0)
    scored = score(user.interest, candidates, RankerParams())
    lift = dict(zip(candidates.item_ids, scored.features["covisit_lift"].tolist(),
                    strict=True))
    assert lift["aliens"] == pytest.approx(1.0)
    assert lift["titanic"] == pytest.approx(1.0 / 9.0)
    plain = score(user.interest, replace(candidates, covisit_lift=None), RankerParams())
    assert np.allclose(scored.total - plain.total,
                       RankerParams().covisit_lift * scored.features["covisit_lift"])


def test_the_candidates_a_next_item_was_chosen_from_are_its_features() -> None:
    graph = CoVisitation()
    for _ in range(3):
        graph.observe(["toy-story"], "cars")
    graph.observe(["toy-story"], "notebook")
    rec = Recommender(catalogue(), covisit=graph)
    user = UserView(interest=VECTORS["toy-story"], recent=[("toy-story", "view", 1.0)],
                    purchased={consumed.item_hash("notebook")})
    features, row = rec.candidate_features(user, Request(), 0, "cars") or (None, -1)
    assert features is not None
    candidates, _ = rec.candidates(user, Request(), now=0)
    assert "notebook" not in candidates.item_ids       # co-visited, but bought: no source
    assert len(features) == len(candidates.item_ids)   # offers it
    assert features[row][FEATURES.index("covisit_1")] == pytest.approx(np.log1p(3.0))
    assert rec.candidate_features(user, Request(), 0, "notebook") is None   # bought
    assert rec.candidate_features(user, Request(), 0, "toy-story") is None  # just seen
    assert rec.candidate_features(user, Request(), 0, "not-in-catalogue") is None


def test_a_users_next_item_teaches_the_ranker_from_the_state_before_it() -> None:
    from app.core.serving import (
        behaviour_example,
        learn_sequence,
        next_items,
        projection_pair,
        sampled,
        user_view,
    )

    cat = catalogue()
    fold = event_fold(EventContext(item_vector=cat.index.vector, query_vectors={},
                                   dimension=D))
    rec = Recommender(cat)
    for user in ("a", "b", "c"):                 # others watched toy story, then cars
        state = UserState()
        for n, item in enumerate(["toy-story", "cars"]):
            result = apply_batch(state, [View(v=1, event_id=f"{user}{n}", user_id=user, ts=n,
                                              item_id=item)], 64, fold)
            learn_sequence(rec, state, result.applied)
            state = result.state
    # one batch of the user's: toy story, its purchase, cars, then titanic
    batch = [View(v=1, event_id="u0", user_id="u", ts=0, item_id="toy-story"),
             Purchase(v=1, event_id="u1", user_id="u", ts=1, item_id="toy-story", price=1.0),
             View(v=1, event_id="u2", user_id="u", ts=2, item_id="cars"),
             View(v=1, event_id="u3", user_id="u", ts=3, item_id="titanic")]
    sampled_items = list(next_items(UserState(), batch, 1.0, fold))
    # the first item has no history; the purchase repeats the item just touched
    assert [(before.recent[-1][0], event.event_id) for before, event in sampled_items] == [
        ("toy-story", "u2"), ("cars", "u3")]
    before, event = sampled_items[0]
    assert [item for item, _, _ in before.recent] == ["toy-story"]   # the state just before
    view = user_view(before, D, _Encoder().encode_query)
    example = behaviour_example(rec, view, before.last_ts, event, Request(), negatives=3)
    assert example is not None
    x, y = example
    assert y.tolist() == [1.0] * 3 + [0.0] * 3            # cars preferred to 3 others
    assert (x[:3, FEATURES.index("covisit_1")] > 0).all()  # only cars follows toy story
    assert np.allclose(x[:3], -x[3:])
    again = behaviour_example(rec, view, before.last_ts, event, Request(), negatives=3)
    assert again is not None
    assert np.array_equal(again[0], x)   # seeded by the event id
    pair = projection_pair(view, event)  # what it teaches the projection W1
    assert pair is not None
    assert pair[1] == "cars"
    query = np.frombuffer(pair[0], dtype="<f2")
    assert np.allclose(query, view.interest, atol=1e-3)   # the interest just before
    assert np.allclose(query, cat.index.vector("toy-story"), atol=1e-3)
    assert list(next_items(UserState(), batch, 0.0, fold)) == []
    share = np.mean([sampled(f"event-{n}", 0.3) for n in range(4000)])
    assert 0.27 < share < 0.33
    assert not sampled("e", 0.0)
    assert sampled("e", 1.0)


class _Encoder:
    dimension = D

    def encode_query(self, text: str) -> np.ndarray:
        return VECTORS["alien"]


def test_covisitation_sums_the_same_whatever_the_size_of_the_id_space() -> None:
    """A large catalogue (many interned ids, few edges reached) is summed through the
    scratch row rather than over the id space: same candidates, totals and lift, and the
    row is left clear for the next request."""
    graph = CoVisitation()
    for user in range(30):
        items = [f"i{(user * 7 + n) % 40}" for n in range(12)]
        for n, item in enumerate(items):
            graph.observe(items[max(0, n - graph.window):n], item)
    recent = [("i3", 1.0), ("i10", 0.5), ("i17", 0.25)]
    sources, items = ["i3", "i10", "i17"], [f"i{n}" for n in range(40)] + ["i3", "unseen"]
    small = graph.candidates(recent, k=8)
    small_lift = graph.lift(sources, items)
    for n in range(20_000):                          # cold items: interned, no edges
        graph.observe([], f"cold{n}")
    for _ in range(2):                               # twice: the scratch row is cleared
        large = graph.candidates(recent, k=8)
        assert large.targets.tolist() == small.targets.tolist()
        assert large.totals == pytest.approx(small.totals)
        assert large.best.tolist() == small.best.tolist()
        assert large.ranked() == small.ranked()
        assert graph.lift(sources, items) == pytest.approx(small_lift)
    assert not graph._scratch.any()


def test_the_neighbourhood_over_the_id_space_is_the_one_the_sort_of_edges_gives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ways to the same neighbourhood: over the id space (small graphs) and by sorting
    the edges (large ones): the same targets, totals, order and strongest contributor, the
    earliest recent item on the many ties of equal weights."""
    rng = np.random.default_rng(2)
    for _ in range(40):
        graph = CoVisitation(max_neighbours=int(rng.integers(2, 12)))
        for _ in range(60):
            items = [f"i{n}" for n in rng.integers(0, 50, 12)]
            for n, item in enumerate(items):
                graph.observe(items[max(0, n - graph.window):n], item,
                              float(rng.choice([1.0, 2.0])))
        recent = [(f"i{n}", float(rng.choice([1.0, 0.5, 0.25]))) for n in
                  rng.integers(0, 55, 15)]
        k = int(rng.integers(1, 20))
        dense = graph.candidates(recent, k)
        monkeypatch.setattr(CoVisitation, "_small", lambda self, edges: False)
        by_sort = graph.candidates(recent, k)
        monkeypatch.undo()
        assert dense.targets.tolist() == by_sort.targets.tolist()
        assert dense.totals.tolist() == by_sort.totals.tolist()
        assert dense.best.tolist() == by_sort.best.tolist()
        assert dense.order.tolist() == by_sort.order.tolist()


def test_a_user_back_after_weeks_away_is_shown_what_is_trending_now() -> None:
    graph = CoVisitation()
    for _ in range(3):
        graph.observe(["toy-story"], "cars")      # long ago: toy story, then cars
    rec = Recommender(catalogue(), covisit=graph, trending=Trending(evidence=1.0))
    for item, ts in (("cars", 0), ("cars", 0), ("cars", 0)):
        rec.popularity.add(item, 1.0, ts)
        rec.trending.add(item, 1.0, ts)
    later = 40 * DAY_MS
    for _ in range(2):                          # what everyone watches now
        rec.popularity.add("titanic", 1.0, later)
        rec.trending.add("titanic", 1.0, later)
    user = UserView(interest=VECTORS["toy-story"], recent=[("toy-story", "view", 1.0)],
                    purchased=set(), last_ts=1000)
    here, counts_here = rec.recommend(user, Request(k=2), now=1000 + 60_000)
    assert here[0].item_id == "cars"                # not away
    assert counts_here["trending"] == 0
    back, _ = rec.recommend(user, Request(k=2), now=later)
    assert back[0].item_id == "titanic"
    assert back[0].explanation.text == "trending since your last visit"
    blind = Recommender(catalogue(), covisit=graph, popularity=rec.popularity,
                        trending=rec.trending, sources=frozenset({"encoder", "covisit",
                                                                  "popular"}))
    ignored, counts_blind = blind.recommend(user, Request(k=2), now=later)
    assert ignored[0].item_id == "cars"             # the ablation: blind to time away
    assert counts_blind["trending"] == 0


def test_presence_halves_with_every_half_life_away() -> None:
    assert presence(0, 10**12) == 1.0                       # unknown last event
    assert presence(1000, 1000 + 59 * 60_000) == 1.0        # under an hour
    assert presence(0 + 1, 1 + 3 * DAY_MS, 3 * DAY_MS) == pytest.approx(0.5)
    assert presence(1, 1 + 9 * DAY_MS, 3 * DAY_MS) == pytest.approx(0.125)


def test_trending_reads_the_shortest_window_with_enough_evidence() -> None:
    trending = Trending(window_days=(1, 9, 81), evidence=10.0)
    for _ in range(8):
        trending.add("titanic", 1.0, 0)            # two months ago: the old favourite
    for _ in range(3):
        trending.add("alien", 1.0, 55 * DAY_MS)    # last week
    for _ in range(4):
        trending.add("cars", 1.0, 60 * DAY_MS)     # today: a few, rising
    now = 60 * DAY_MS + HOUR_MS
    # the day holds 4 interactions, the last 9 days 7 (< 10): the 81-day window answers
    assert trending.horizon(now).days == 81
    assert trending.top(3, now) == [("titanic", 8.0), ("cars", 4.0), ("alien", 3.0)]
    for _ in range(6):
        trending.add("alien", 1.0, 58 * DAY_MS)
    assert trending.horizon(now).days == 9          # 13 in the last 9 days
    assert trending.top(3, now) == [("alien", 9.0), ("cars", 4.0)]   # a flat window
    for _ in range(8):
        trending.add("jaws", 1.0, now)
    assert trending.horizon(now).days == 1           # 12 today: the day answers
    assert [item for item, _ in trending.top(1, now)] == ["jaws"]
    assert trending.values(["cars", "alien", "nope"], now).tolist() == [4.0, 0.0, 0.0]
    empty = trending.fresh().horizon(now)
    assert (empty.counts, empty.total) == ({}, 0.0)


def test_trending_windows_move_with_the_newest_event_not_the_time_asked() -> None:
    trending = Trending(window_days=(3, 9), evidence=1.0)
    trending.add("titanic", 2.0, 0)
    trending.add("cars", 1.0, 2 * DAY_MS)
    assert trending.top(2, 2 * DAY_MS) == [("titanic", 2.0), ("cars", 1.0)]
    # asked a month later with nothing since: what was trending when the stream last moved
    assert trending.top(2, 32 * DAY_MS) == [("titanic", 2.0), ("cars", 1.0)]
    trending.add("cars", 1.0, 3 * DAY_MS)             # day 0 leaves the 3 days
    assert trending.top(2, 3 * DAY_MS) == [("cars", 2.0)]
    assert trending.horizon(3 * DAY_MS).days == 3
    trending.add("alien", 1.0, 10 * DAY_MS)           # the windows move on
    assert trending.top(3, 10 * DAY_MS) == [("alien", 1.0)]    # the 3 days: alien only
    assert set(trending.windows[0].buckets) == {10 * 24}       # hours: the last 3 days
    assert set(trending.windows[1].buckets) == {2, 3, 10}      # days: day 0 is gone
    shortest = trending.horizon(10 * DAY_MS)
    assert (shortest.counts, shortest.total) == ({"alien": 1.0}, 1.0)
    assert (trending.windows[1].counts, trending.windows[1].total) == (
        {"cars": 2.0, "alien": 1.0}, 3.0)


def test_trending_memory_is_bounded_by_the_items_a_closed_bucket_keeps() -> None:
    trending = Trending(window_days=(1, 9), evidence=1.0, bucket_items=2)
    for item, times in (("a", 5), ("b", 4), ("c", 1), ("d", 1)):
        for _ in range(times):
            trending.add(item, 1.0, 0)
    assert trending.top(4, 0) == [("a", 5.0), ("b", 4.0), ("c", 1.0), ("d", 1.0)]  # open
    trending.add("e", 1.0, 2 * HOUR_MS)           # the first hour closes: c and d go
    assert trending.top(5, 2 * HOUR_MS) == [("a", 5.0), ("b", 4.0), ("e", 1.0)]
    assert trending.horizon(2 * HOUR_MS).total == 10.0
    assert trending.windows[0].buckets[0] == {"a": 5.0, "b": 4.0}
    trending.add("e", 1.0, 2 * DAY_MS)            # day 0 closes in the 9 days: c, d, e go
    assert trending.windows[1].buckets[0] == {"a": 5.0, "b": 4.0}
    assert trending.windows[1].counts == {"a": 5.0, "b": 4.0, "e": 1.0}   # e: day 2's


def test_with_global_item_statistics_a_worker_counts_items_only_into_the_evidence() -> None:
    """Global item statistics: a worker's events (and a late profile's history) go to the
    evidence alone, graph and overall and segment popularity alike: the worker merges them
    back from the evidence topic like everyone's (counted here too, twice). A regrowth
    after a rebalance leaves those global parts alone and regrows trending only."""
    from app.core.itemstats import Evidence
    from app.core.serving import learn_segment_history, learn_sequence, rebuild_memory

    cat = catalogue()
    context = EventContext(item_vector=cat.index.vector, query_vectors={}, dimension=D)
    live, state = Recommender(cat), UserState()
    evidence = Evidence(live.covisit, live.popularity.half_life_ms)
    batch = [View(v=1, event_id=f"v{n}", user_id="u", ts=n, item_id=item)
             for n, item in enumerate(["alien", "aliens", "predator"])]
    result = apply_batch(state, batch, 64, event_fold(context))
    learn_sequence(live, state, result.applied, ("age:25-34",), evidence)
    learn_segment_history(live, result.state, ("gender:f",), evidence)
    assert not live.covisit.out
    assert not live.popularity.scores
    assert not live.segment_popularity
    assert live.trending.top(5, 3)   # (trending stays per worker)
    assert evidence.edges["alien"] == {"aliens": 1.0, "predator": 0.5}
    [record] = evidence.split(1, lambda key, n: 0).values()
    assert record.segments.keys() == {"age:25-34", "gender:f"}
    assert record.segments["gender:f"].keys() == {"alien", "aliens", "predator"}
    live.segment_popularity["age:25-34"] = followed = Popularity()
    rebuild_memory(live, [(result.state, ("age:25-34",))], items=False)
    assert live.segment_popularity == {"age:25-34": followed}
