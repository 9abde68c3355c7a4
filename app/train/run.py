"""`streamrec train`: the behaviour model trained on a dataset's leave-last-out split.

The split is the evaluation's (app.evaluation.split): each user's last rating is the target
and never trained on. Training reads every user's history but its last event, which is the
validation target (checked after every epoch; the best epoch's weights are kept); the test
figure is the end-of-stream protocol: the model reads the whole history and ranks every
item the user has not rated for the target (NDCG@10, HR@10), as the published numbers do.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from app.core.sequence import KINDS, Tokens, Vocabulary, tokens
from app.demo import POSITIVE_RATING
from app.evaluation.split import Split
from app.train.model import BehaviourModel, ModelConfig

Event = tuple[int, int, int]   # (item index, kind token, event time ms)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch: int = 128
    lr: float = 1e-3
    seed: int = 0
    threads: int = 2


@dataclass
class Curve:
    epochs: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    valid_ndcg: list[float] = field(default_factory=list)
    valid_hr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def histories(split: Split, vocabulary: Vocabulary) -> dict[str, list[Event]]:
    """Every user's streamed ratings as model events, oldest first: a rating of 4 or more
    is a purchase (as the replay sends it), any other a view."""
    found: dict[str, list[Event]] = {}
    for rating in split.stream:
        kind = KINDS["purchase"] if rating.rating >= POSITIVE_RATING else KINDS["view"]
        found.setdefault(rating.user_id, []).append(
            (vocabulary.of(rating.item_id), kind, rating.ts_ms))
    return found


def next_item_batch(sequences: Sequence[Sequence[Event]], length: int
                    ) -> tuple[Tokens, np.ndarray]:
    """Inputs (every event but the last) and targets (the next item at every position),
    the last ``length`` of each, left-padded."""
    inputs = tokens([s[:-1] for s in sequences], length)
    targets = np.zeros_like(inputs.items)
    for row, sequence in enumerate(sequences):
        tail = [item for item, _, _ in sequence[1:]][-length:]
        targets[row, length - len(tail):] = tail
    return inputs, targets


def _tensors(batch: Tokens) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(batch.items), torch.from_numpy(batch.kinds),
            torch.from_numpy(batch.gaps))


@torch.no_grad()
def rank_targets(model: BehaviourModel, inputs: Sequence[Sequence[Event]],
                 targets: Sequence[int], batch: int = 512) -> np.ndarray:
    """Each target's 0-based rank among the items its user has not had (full ranking)."""
    model.eval()
    ranks = np.empty(len(targets), dtype=np.int64)
    length = model.config.length
    for start in range(0, len(targets), batch):
        chunk = inputs[start:start + batch]
        scores = model.scores(*_tensors(tokens(chunk, length)))
        scores[:, 0] = -math.inf
        for row, sequence in enumerate(chunk):
            seen = [item for item, _, _ in sequence if item != targets[start + row]]
            scores[row, seen] = -math.inf
        wanted = torch.as_tensor(targets[start:start + batch])
        own = scores.gather(1, wanted[:, None])
        ranks[start:start + len(chunk)] = (scores > own).sum(1).numpy()
    return ranks


def ndcg_hr(ranks: np.ndarray, k: int = 10) -> tuple[float, float]:
    inside = ranks < k
    gains = np.where(inside, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean()), float(inside.mean())


def train(split: Split, model_config: ModelConfig, config: TrainConfig,
          text: torch.Tensor | None = None,
          progress: Callable[[str, int, int], None] = lambda stage, done, total: None,
          on_epoch: Callable[[Curve], None] = lambda curve: None,
          ) -> tuple[BehaviourModel, Curve, dict[str, float]]:
    """Train on every user's history but its last event, keep the epoch that ranks those
    last events best, and measure it on the split's targets (end of stream)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    torch.set_num_threads(config.threads)
    vocabulary = Vocabulary(split.items)
    by_user = histories(split, vocabulary)
    users = sorted(u for u, events in by_user.items() if len(events) >= 2)
    train_sequences = [by_user[u][:-1] for u in users]
    valid_inputs = train_sequences
    valid_targets = [by_user[u][-1][0] for u in users]
    model = BehaviourModel(model_config, text)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
    inputs, targets = next_item_batch(train_sequences, model_config.length)
    curve = Curve()
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    steps = math.ceil(len(users) / config.batch)
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = rng.permutation(len(users))
        total = 0.0
        for step in range(steps):
            rows = order[step * config.batch:(step + 1) * config.batch]
            hidden = model(torch.from_numpy(inputs.items[rows]),
                           torch.from_numpy(inputs.kinds[rows]),
                           torch.from_numpy(inputs.gaps[rows]))
            wanted = torch.from_numpy(targets[rows])
            mask = wanted > 0
            logits = hidden[mask] @ model.item_table().T
            loss = functional.cross_entropy(logits, wanted[mask])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += loss.item()
            progress(f"epoch {epoch}/{config.epochs}", step + 1, steps)
        ranks = rank_targets(model, valid_inputs, valid_targets)
        ndcg, hr = ndcg_hr(ranks)
        curve.epochs.append(epoch)
        curve.loss.append(total / steps)
        curve.valid_ndcg.append(ndcg)
        curve.valid_hr.append(hr)
        curve.seconds.append(time.perf_counter() - started)
        on_epoch(curve)
        if best is None or ndcg > best[0]:
            best = (ndcg, {k: v.detach().clone() for k, v in model.state_dict().items()})
    assert best is not None
    model.load_state_dict(best[1])
    test_users = sorted(split.targets)   # every target counts: one not ranked is a miss
    test_targets = [vocabulary.of(split.targets[u].item_id) for u in test_users]
    known = [n for n, t in enumerate(test_targets) if t > 0 and by_user.get(test_users[n])]
    ranks = rank_targets(model, [by_user[test_users[n]] for n in known],
                         [test_targets[n] for n in known])
    # a target the vocabulary lacks cannot be ranked: a miss, counted over all users
    all_ranks = np.full(len(test_users), np.iinfo(np.int64).max // 2, dtype=np.int64)
    all_ranks[known] = ranks
    ndcg, hr = ndcg_hr(all_ranks)
    best_epoch = curve.epochs[int(np.argmax(curve.valid_ndcg))]
    return model, curve, {"ndcg@10": ndcg, "hr@10": hr, "users": float(len(test_users)),
                          "best_epoch": float(best_epoch)}


def text_vectors(split: Split, model_dir: Path) -> torch.Tensor:
    """The text-encoder vector of every item of the split's catalogue, in vocabulary order
    (row 0, padding, is zero): the text the worker embeds for the item."""
    from app.core.catalogue import item_text
    from app.encoder.runtime import Encoder

    upserts = {u.item_id: u for u in split.catalogue}
    encoder = Encoder(model_dir)
    vectors = encoder.encode([item_text(upserts[item]) for item in split.items], "passage")
    table = np.zeros((len(split.items) + 1, vectors.shape[1]), dtype=np.float32)
    table[1:] = vectors
    return torch.from_numpy(table)


def sample_tokens(split: Split, length: int, users: int = 256) -> Tokens:
    """Real histories of the split (the first ``users`` users'), for the export's parity
    check."""
    by_user = histories(split, Vocabulary(split.items))
    chosen = sorted(by_user)[:users]
    return tokens([by_user[u] for u in chosen], length)


def plot_curve(curve: Curve, path: Path, title: str) -> Path | None:
    """The validation curve (NDCG@10 and HR@10 per epoch) and the training loss."""
    from app.plots import pyplot

    plt = pyplot()
    if plt is None or not curve.epochs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(curve.epochs, curve.valid_ndcg, marker=".", label="NDCG@10")
    left.plot(curve.epochs, curve.valid_hr, marker=".", label="HR@10")
    left.set_xlabel("epoch")
    left.set_title("validation (each user's last streamed event)")
    left.legend()
    right.plot(curve.epochs, curve.loss, marker=".", color="tab:red")
    right.set_xlabel("epoch")
    right.set_title("training loss (full-softmax cross-entropy)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_checkpoint(path: Path) -> BehaviourModel:
    """A model saved by :func:`save` (its ``.pt``), in eval mode."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = ModelConfig(**saved["config"])
    text = torch.zeros(config.items + 1, config.text_dim) if config.text_dim else None
    model = BehaviourModel(config, text)   # the text buffer comes with the weights
    model.load_state_dict(saved["model"])
    return model.eval()


def save(path: Path, model: BehaviourModel, curve: Curve, result: dict[str, float],
         config: TrainConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": model.config.as_dict()},
               path.with_suffix(".pt"))
    path.with_suffix(".json").write_text(json.dumps({
        "model": model.config.as_dict(), "train": config.__dict__, "result": result,
        "curve": curve.__dict__}, indent=2) + "\n")
