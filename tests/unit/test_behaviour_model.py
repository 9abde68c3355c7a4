"""The behaviour model learns a known sequential pattern (torch: the training extra)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from app.data.movielens import Rating  # noqa: E402
from app.evaluation.split import leave_last_out  # noqa: E402
from app.train.model import BehaviourModel, ModelConfig  # noqa: E402
from app.train.run import TrainConfig, next_item_batch, train  # noqa: E402

ITEMS = [f"i{n}" for n in range(30)]


def _cycles(users: int, length: int) -> list[Rating]:
    """Each user walks the catalogue in order from their own start: the next item is
    always the one after the last (the obvious answer a sequence model must find)."""
    ratings = []
    for user in range(users):
        for step in range(length):
            item = ITEMS[(user + step) % len(ITEMS)]
            ratings.append(Rating(len(ratings), f"u{user}", item, 4.0,
                                  1_000_000 + 60_000 * (user * length + step)))
    return sorted(ratings, key=lambda r: r.ts_ms)


def test_targets_are_the_next_item_at_every_position() -> None:
    inputs, targets = next_item_batch([[(1, 1, 0), (2, 1, 1), (3, 3, 2)]], 4)
    assert inputs.items.tolist() == [[0, 0, 1, 2]]
    assert targets.tolist() == [[0, 0, 2, 3]]


def test_it_learns_what_comes_next() -> None:
    split = leave_last_out(_cycles(60, 12), ITEMS)
    config = ModelConfig(items=len(ITEMS), length=16, dim=16, blocks=1, dropout=0.0)
    model, curve, result = train(split, config, TrainConfig(epochs=30, batch=32, lr=5e-3))
    assert result["users"] == 60
    assert result["hr@10"] > 0.9            # random would be ~10 / 19 unseen items
    assert result["ndcg@10"] > 0.6
    assert curve.valid_ndcg[-1] > curve.valid_ndcg[0]
    assert isinstance(model, BehaviourModel)


def test_an_item_has_an_embedding_from_its_text_before_anyone_touched_it() -> None:
    text = torch.zeros(len(ITEMS) + 1, 8)
    text[5, 0] = 1.0
    model = BehaviourModel(ModelConfig(items=len(ITEMS), length=4, dim=8, text_dim=8), text)
    with torch.no_grad():
        model.item.weight.zero_()   # no id embedding learnt for anything
        table = model.item_table()
    assert float(table[5].abs().sum()) > 0
    assert float(table[6].abs().sum()) == 0
