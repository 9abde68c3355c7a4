"""The stream trainer's pure parts: its history folds events exactly as a worker does, a
round warm-starts into a grown vocabulary, validation holds back only events no model has
trained on, and the served artefact is judged on the same events as the new model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.contract.records import ItemDelete, ItemUpsert, Purchase, Search, View
from app.core.sequence import STORED, HashedVocabulary, stored_events
from app.train.history import StreamHistory, split_last

MINUTE = 60_000


def _view(user: str, item: str, ts: int, n: int = 0) -> View:
    return View(v=1, event_id=f"{user}-{item}-{ts}-{n}", user_id=user, ts=ts, item_id=item)


def test_the_history_folds_events_as_the_worker_stores_them() -> None:
    from app.core.sequence import SEQUENCE_LENGTH
    from app.core.state import EventContext, UserState, apply_batch, event_fold

    rng = np.random.default_rng(3)
    events: list[View | Purchase | Search] = []
    ts = 0
    for n in range(260):
        ts += int(rng.integers(0, 3 * 10**7))
        item = f"i{int(rng.integers(0, 30))}"
        events.append(_view("u", item, ts, n))
        if n % 3 == 0:
            events.append(Purchase(v=1, event_id=f"p{n}", user_id="u", ts=ts, item_id=item,
                                   price=1.0))
        if n % 17 == 0:
            events.append(Search(v=1, event_id=f"s{n}", user_id="u", ts=ts, query="film"))
    context = EventContext(item_vector=lambda item: None, query_vectors={}, dimension=4)
    worker = apply_batch(UserState(), events, 1024, event_fold(context)).state
    history = StreamHistory(keep=SEQUENCE_LENGTH)
    folded = [history.add_event(e) for e in events]
    assert history.sequences["u"] == worker.sequence
    assert sum(folded) == sum(not isinstance(e, Search) for e in events)
    assert set(history.vocabulary) == {e.item_id for e in events if not isinstance(e, Search)}


def test_validation_holds_back_only_events_since_the_last_round() -> None:
    history = StreamHistory(keep=10)
    for user, count in (("a", 3), ("b", 1), ("c", 2)):
        for n in range(count):
            history.add_event(_view(user, f"i{n}", n * MINUTE + ord(user)))
    # "b" has a single event: nothing to read before it
    assert history.fresh(10) == ["a", "c"]          # newest last event first
    assert history.fresh(1) == ["a"]
    history.rounds = 1                                # a round trained on all of it
    assert history.fresh(10) == []
    history.add_event(_view("a", "i9", 10 * MINUTE))
    assert history.fresh(10) == ["a"]
    prefix, target = split_last(history.sequences["a"])
    assert len(prefix) == 3 * STORED.itemsize
    assert HashedVocabulary(history.vocabulary).lookup(
        np.array([target], dtype=np.uint32))[0] == history.vocabulary.index("i9") + 1


def test_items_forget_and_resume() -> None:
    history = StreamHistory(keep=5)
    history.add_item(ItemUpsert(v=1, event_id="e1", item_id="new", title="A film", ts=1))
    history.add_event(_view("u", "old", 1))
    history.add_event(_view("v", "new", 2))
    assert history.vocabulary == ["new", "old"]
    assert history.texts == {"new": "A film"}
    history.add_item(ItemDelete(v=1, event_id="e2", item_id="new", ts=3))
    assert history.texts == {}
    assert history.vocabulary == ["new", "old"]
    history.offsets = {"events": {0: 2, 3: 7}}
    again = StreamHistory.loads(history.dumps())
    assert again.sequences == history.sequences
    assert again.offsets == history.offsets
    assert again.vocabulary == history.vocabulary
    again.add_event(_view("w", "third", 4))
    assert again.vocabulary[-1] == "third"
    assert again.forget("u")
    assert not again.forget("u")
    assert "u" not in again.sequences
    assert "u" not in again.last_ts
    assert again.users(1) == ["v", "w"]


def test_rank_scores_filters_what_the_user_had_and_counts_unscored_targets_as_misses(
        ) -> None:
    pytest.importorskip("torch")
    from app.train.stream import MISS, rank_scores

    scores = np.array([[9, 5, 4, 3, 1], [9, 1, 2, -np.inf, 3]], dtype=np.float32)
    ranks = rank_scores(scores, [np.array([1, 2]), np.array([], dtype=np.int64)],
                        np.array([3, 3]))
    assert ranks.tolist() == [0, MISS]   # items 1 and 2 were had; padding never counts


def _cyclic(users: int, items: int, length: int, start: int = 0) -> StreamHistory:
    """Each user walks the catalogue in order from their own starting item: the next item
    is always the one after the last."""
    history = StreamHistory(keep=length + 1)
    for u in range(users):
        for n in range(length):
            history.add_event(_view(f"u{u}", f"i{(u + n) % items}", start + n * MINUTE, n))
    return history


def test_a_round_learns_then_warm_starts_into_a_grown_vocabulary(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from app.train.stream import StreamOptions, grow, model_ranks, served_ranks, train_round

    options = StreamOptions(first_epochs=12, update_epochs=1, batch=32, length=12, dim=16,
                            blocks=1, dropout=0.0, threads=1, valid_users=40, lr=5e-3)
    history = _cyclic(users=80, items=20, length=12)
    first = train_round(None, history, None, options)
    assert first.valid_users == 40
    assert first.valid_ndcg > 0.6            # the cycle is learnt (chance: ~0.15)
    history.rounds = 1
    # new events, one on an item no one had: the vocabulary grows, old rows are kept
    for u in range(10):
        history.add_event(_view(f"u{u}", "brand-new" if u == 0 else f"i{(u + 12) % 20}",
                                13 * MINUTE, 99))
    grown = grow(first.model, first.model.config.__class__(
        **{**first.model.config.as_dict(), "items": len(history.vocabulary)}), None)
    assert torch.equal(grown.item.weight[:21], first.model.item.weight)
    assert torch.count_nonzero(grown.item.weight[21:]) == 0
    second = train_round(first.latest, history, None, options)
    assert second.model.config.items == 21
    assert second.valid_users == 10
    assert second.best_epoch in (0, 1)
    # the best epoch is never worse than the model as it was (epoch 0) on the same events
    before = model_ranks(grow(first.latest.model, second.model.config, None),
                         second.valid_inputs,
                         second.valid_targets, HashedVocabulary(second.vocabulary))
    from app.train.run import ndcg_hr
    assert second.valid_ndcg >= ndcg_hr(before)[0]
    # training goes on from the last weights and Adam moments, the new item's rows at 0
    moments = second.latest.moments["item.weight"]
    assert moments["exp_avg"].shape == (22, 16)
    steps_per_epoch = 3   # 80 users, batch 32
    assert int(moments["step"]) == 12 * steps_per_epoch + 1 * steps_per_epoch
    # the served artefact, scored as a worker scores it, ranks as torch does
    from app.core.sequence import stored_tokens
    from app.train.export import export

    sample = stored_tokens(second.valid_inputs, HashedVocabulary(second.vocabulary), 12)
    export(second.model, second.vocabulary, sample, tmp_path / "m")
    served = served_ranks(tmp_path / "m", second.valid_inputs, second.valid_targets,
                          second.vocabulary, lambda item: None)
    mine = model_ranks(second.model, second.valid_inputs, second.valid_targets,
                       HashedVocabulary(second.vocabulary))
    assert served.tolist() == mine.tolist()
    assert len(stored_events(second.valid_inputs[0])) == 12


def test_state_survives_a_restart(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from app.train.stream import StreamOptions, load_state, save_state, train_round

    options = StreamOptions(first_epochs=1, batch=32, length=6, dim=8, blocks=1, threads=1)
    history = _cyclic(users=10, items=8, length=6)
    result = train_round(None, history, None, options)
    history.rounds = 1
    history.offsets = {"events": {0: 60}}
    save_state(tmp_path, history, result.latest)
    again, trained = load_state(tmp_path, keep=7)
    assert trained is not None
    model = trained.model
    assert set(trained.moments) == {n for n, _ in result.latest.model.named_parameters()}
    assert model is not None
    assert again.offsets == {"events": {0: 60}}
    assert again.rounds == 1
    assert again.sequences == history.sequences
    for name, tensor in result.latest.model.state_dict().items():
        assert (model.state_dict()[name] == tensor).all(), name


def test_the_chunked_softmax_loss_is_the_full_one_with_the_same_gradients() -> None:
    torch = pytest.importorskip("torch")
    from torch.nn import functional

    from app.train.stream import softmax_loss

    torch.manual_seed(0)
    hidden = torch.randn(50, 8, requires_grad=True)
    table = torch.randn(30, 8, requires_grad=True)
    goal = torch.randint(1, 30, (50,))
    full = functional.cross_entropy(hidden @ table.T, goal)
    grads = torch.autograd.grad(full, (hidden, table))
    chunked = softmax_loss(hidden, table, goal, logits_bytes=30 * 16 * 7)   # 7 a chunk
    assert torch.allclose(chunked, full, atol=1e-6)
    for mine, theirs in zip(torch.autograd.grad(chunked, (hidden, table)), grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)


def test_text_vectors_are_computed_once_and_survive_a_restart(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from app.train.stream import TextVectors

    calls: list[list[str]] = []

    def encode(batch: list[str]) -> np.ndarray:
        calls.append(batch)
        return np.array([[len(t), 1.0] for t in batch], dtype=np.float32)

    vectors = TextVectors(encode, 2)
    texts = {"a": "one", "b": "three", "c": "one"}
    assert vectors.update(texts) == 2
    assert vectors.update(texts) == 0
    vectors.save(tmp_path / "t.msgpack")
    again = TextVectors(encode, 2)
    again.load(tmp_path / "t.msgpack")
    assert again.update(texts) == 0
    assert len(calls) == 1
    table = again.table(["c", "zz", "b"], texts)
    assert table.tolist() == [[0, 0], [3, 1], [0, 0], [5, 1]]
