"""The behaviour model learns a known sequential pattern (torch: the training extra)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from app.data.movielens import Rating  # noqa: E402
from app.evaluation.split import leave_last_out  # noqa: E402
from app.train.model import BehaviourModel, ModelConfig, dropout  # noqa: E402
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


def test_dropout_drops_at_its_rate_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.ones(400, 500, requires_grad=True)
    y = dropout(x, 0.2, True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.005                  # 200,000 draws: sd ~0.0009
    assert set(torch.unique(y).tolist()) == {0.0, 1.25}
    assert abs(y.mean().item() - 1.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())             # the gradient passes where kept, scaled
    assert dropout(x, 0.2, False) is x                  # evaluation: the identity
    odd = torch.ones(3, 5, 7)                           # sizes not a multiple of 4 words
    assert dropout(odd, 0.5, True).shape == odd.shape
    assert not dropout(odd, 1.0, True).any()


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


def test_the_exported_model_serves_what_torch_computes_from_the_worker_s_stored_state(
        tmp_path: object) -> None:
    """Train, export to ONNX, load torch-free the way a worker does, and feed it the
    sequences the worker's state fold stores: the user vectors are torch's for the same
    histories, and the served ranking finds the next item of the pattern."""
    from pathlib import Path

    import numpy as np

    from app.core.sequence import KINDS, Vocabulary, append, tokens
    from app.encoder.behaviour import SequenceModel
    from app.train.export import export
    from app.train.run import histories

    split = leave_last_out(_cycles(60, 12), ITEMS)
    config = ModelConfig(items=len(ITEMS), length=16, dim=16, blocks=1, dropout=0.0)
    model, _, _ = train(split, config, TrainConfig(epochs=30, batch=32, lr=5e-3))
    by_user = histories(split, Vocabulary(split.items))
    users = sorted(by_user)[:12]   # two onnxruntime calls of at most CHUNK users
    folder = Path(str(tmp_path)) / "model"
    manifest = export(model, split.items, tokens([by_user[u] for u in users], 16), folder)
    assert manifest["parity_max_abs"] < 1e-4
    served = SequenceModel.load(folder)
    assert served.version == manifest["version"]
    stored = []
    for user in users:
        sequence, previous = b"", None
        for index, kind, ts in by_user[user]:
            kind_name = next(name for name, token in KINDS.items() if token == kind)
            sequence = append(sequence, split.items[index - 1], kind_name,
                              None if previous is None else ts - previous)
            previous = ts
        stored.append(sequence)
    vectors = served.user_vectors([*stored, b""])
    assert vectors[-1] is None
    with torch.no_grad():
        batch = tokens([by_user[u] for u in users], 16)
        expected = model.user_vectors(torch.from_numpy(batch.items),
                                      torch.from_numpy(batch.kinds),
                                      torch.from_numpy(batch.gaps)).numpy()
    got = np.stack([v for v in vectors[:-1] if v is not None])
    assert np.abs(got - expected).max() < 1e-4
    space = served.space
    space.sync(1, ITEMS, lambda item: None)
    hits = 0
    for user, vector in zip(users, got, strict=True):   # the lists leave out what was seen
        seen = {split.items[index - 1] for index, _, _ in by_user[user]}
        ranked = space.top(space.log_lift(vector[None, :])[0], len(ITEMS))
        hits += split.targets[user].item_id in [i for i in ranked if i not in seen][:10]
    assert hits >= 7

    # the weight chosen for it ships inside the artefact: a new version, served scaled
    from app.train.export import content_hash
    from app.train.weight import Choice, write_choice

    tuned = write_choice(folder, Choice(0.5, {0.5: 0.3, 1.0: 0.2}, 0.1, (0.2, 0.02), 0.1, 0.01,
                                        12, 1.0))
    assert tuned["version"] != manifest["version"]
    assert tuned["version"] == content_hash(folder, tuned["files"])
    reloaded = SequenceModel.load(folder)
    assert (reloaded.version, reloaded.space.scale) == (tuned["version"], 0.5)
    assert served.space.scale == 1.0     # exported without a choice: scale 1


@pytest.mark.parametrize("heads", [1, 2])
def test_the_user_vector_computes_only_the_last_position_and_reads_the_same(heads: int) -> None:
    torch.manual_seed(3)
    model = BehaviourModel(ModelConfig(items=len(ITEMS), length=12, dim=16, blocks=2,
                                       heads=heads)).eval()
    items = torch.randint(0, len(ITEMS) + 1, (5, 12))
    items[0, :7] = 0                                  # a short, left-padded history
    kinds, gaps = torch.randint(1, 3, (5, 12)), torch.randint(1, 4, (5, 12))
    with torch.no_grad():
        every = model(items, kinds, gaps)[:, -1]      # all positions, then the last
        last = model.user_vectors(items, kinds, gaps)
    assert last.shape == (5, 16)
    assert torch.allclose(every, last, atol=1e-5)
