"""`streamrec train --stream`: the behaviour model trained from the stream itself.

The trainer reads the ``events``, ``items`` and ``users`` topics from where it last
stopped (its own consumer group, ``<app id>-behaviour-trainer``, offsets committed after
each round's state is saved), folds each item event into the user's stored sequence as a
worker does (``app.train.history``) and, every ``every_events`` new item events (or after
``interval_seconds`` with any), runs a training round:

1. the vocabulary grows by the items that appeared; the previous round's model is
   warm-started into it (an old item keeps its learnt row; a new one starts from its text
   vector through the learnt projection, as a worker scores it before any training);
2. validation holds back the last event of the users whose last event arrived since the
   previous round (no model has trained on it), newest first, up to ``valid_users``;
   everything else is trained on, full-softmax cross-entropy at every position;
3. the first round trains ``first_epochs`` epochs, later ones ``update_epochs``, going on
   from the last round's last weights and Adam moments (rounds add up to one long run);
   the round's candidate is its best epoch on validation (a warm round's epoch 0 is the
   model as it was);
4. the round's model is exported (ONNX, parity-checked against torch) and published on the
   models topic only when its validation NDCG@10 beats the served model's measured on the
   same held-back events (the served artefact is read back from the topic and scored with
   onnxruntime, as a worker serves it), or with ``force``;
5. the state (sequences, vocabulary, offsets) and the weights are saved, then the offsets
   committed: a trainer killed at any moment resumes from its last round, nothing folded
   twice.

A forget request (a tombstone on ``users``) deletes the user's stored sequence; the next
round's model no longer trains on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional
from torch.utils.checkpoint import checkpoint

from app.contract.validate import Limits, Rejection, forget_rejection, validators
from app.core.artefacts import GATE, publish_verdict
from app.core.sequence import STORED, HashedVocabulary, Tokens, stored_events, stored_tokens
from app.train.history import StreamHistory, split_last
from app.train.model import BehaviourModel, ModelConfig
from app.train.run import Curve, ndcg_hr

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
Say = Callable[[str], None]
MISS = np.iinfo(np.int64).max // 2   # the rank of a target a model cannot score


@dataclass(frozen=True)
class StreamOptions:
    every_events: int = 10_000       # a round after this many new item events
    interval_seconds: float = 300.0  # ... or after this long with any new item event
    first_epochs: int = 30
    update_epochs: int = 2
    batch: int = 128
    lr: float = 1e-3
    seed: int = 0
    threads: int = 2
    valid_users: int = 2_000
    rounds: int = 0                  # stop after this many rounds (0: run until stopped)
    force: bool = False              # publish even when not better than the served model
    length: int = 200
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    text: bool = True
    logits_bytes: int = 256 * 1024 * 1024   # a training step's logits, at most (chunked)


Moments = dict[str, dict[str, torch.Tensor]]


@dataclass
class Trained:
    """Where training goes on from: the last epoch's weights and the optimiser's moments
    (by parameter name), so that rounds of a few epochs add up to one long run."""

    model: BehaviourModel
    moments: Moments = field(default_factory=dict)


@dataclass
class RoundResult:
    model: BehaviourModel                   # the best epoch on validation: the candidate
    latest: Trained
    vocabulary: list[str]
    curve: Curve
    valid_ndcg: float
    valid_hr: float
    valid_users: int
    best_epoch: int
    seconds: float
    valid_inputs: list[bytes] = field(default_factory=list)
    valid_targets: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64))


# --- text vectors ----------------------------------------------------------------------


class TextVectors:
    """The encoder's vector of each catalogue text, computed once per text."""

    def __init__(self, encode: Callable[[list[str]], npt.NDArray[np.float32]], dim: int
                 ) -> None:
        self._encode = encode
        self.dim = dim
        self._by_text: dict[str, npt.NDArray[np.float32]] = {}

    def update(self, texts: dict[str, str], chunk: int = 256,
               progress: Progress = lambda stage, done, total: None) -> int:
        new = sorted({t for t in texts.values() if t not in self._by_text})
        for start in range(0, len(new), chunk):
            part = new[start:start + chunk]
            for text, vector in zip(part, self._encode(part), strict=True):
                self._by_text[text] = vector.astype(np.float32)
            progress("encoding new items", min(start + chunk, len(new)), len(new))
        return len(new)

    def save(self, path: Path) -> None:
        """Every vector computed so far (a restarted trainer does not embed them again)."""
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.msgpack.encode(
            {text: vector.tobytes() for text, vector in self._by_text.items()}))
        tmp.replace(path)

    def load(self, path: Path) -> None:
        if not path.exists():
            return
        for text, raw in msgspec.msgpack.decode(path.read_bytes(),
                                                type=dict[str, bytes]).items():
            vector = np.frombuffer(raw, dtype=np.float32)
            if vector.shape == (self.dim,):
                self._by_text[text] = vector

    def vector(self, texts: dict[str, str], item_id: str) -> npt.NDArray[np.float32] | None:
        text = texts.get(item_id)
        return None if text is None else self._by_text.get(text)

    def table(self, vocabulary: Sequence[str], texts: dict[str, str]) -> torch.Tensor:
        """(items + 1, dim), vocabulary order, row 0 and items without text zero."""
        table = np.zeros((len(vocabulary) + 1, self.dim), dtype=np.float32)
        for n, item in enumerate(vocabulary, 1):
            vector = self.vector(texts, item)
            if vector is not None:
                table[n] = vector
        return torch.from_numpy(table)


# --- one round -------------------------------------------------------------------------


def grow(previous: BehaviourModel | None, config: ModelConfig,
         text: torch.Tensor | None) -> BehaviourModel:
    """A model over ``config.items`` items: fresh, or ``previous`` warm-started into it
    (every weight kept; the vocabulary only grows, so its first rows are the old items'
    rows; a new item's id row starts at 0 and its text gives it an embedding)."""
    model = BehaviourModel(config, text)
    if previous is None:
        return model
    old = previous.config
    if (old.length, old.dim, old.blocks, old.heads, old.text_dim) != (
            config.length, config.dim, config.blocks, config.heads, config.text_dim):
        raise ValueError("the saved model's shape differs from the options: train afresh "
                         "(a new --out folder) or use the saved shape")
    if old.items > config.items:
        raise ValueError("the vocabulary cannot shrink")
    state = {k: v for k, v in previous.state_dict().items()
             if k not in ("item.weight", "text")}
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        model.item.weight[:old.items + 1] = previous.item.weight
        model.item.weight[old.items + 1:] = 0.0
    return model


def _targets(sequences: Sequence[bytes], vocabulary: HashedVocabulary, length: int
             ) -> npt.NDArray[np.int64]:
    """The next item's index at every input position (left-padded, 0: no target)."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, stored in enumerate(sequences):
        following = vocabulary.lookup(stored_events(stored)["item"][1:])[-length:]
        out[row, length - len(following):] = following
    return out


def training_batches(sequences: Sequence[bytes], vocabulary: HashedVocabulary, length: int,
                     batch: int, rng: np.random.Generator
                     ) -> Iterator[tuple[Tokens, npt.NDArray[np.int64]]]:
    """Shuffled batches: the inputs (every event but the last) and the next item at every
    position, built per batch from the stored bytes (memory: one batch's arrays)."""
    size = STORED.itemsize
    order = rng.permutation(len(sequences))
    for start in range(0, len(order), batch):
        chosen = [sequences[n] for n in order[start:start + batch]]
        inputs = stored_tokens([s[:-size] for s in chosen], vocabulary, length)
        yield inputs, _targets(chosen, vocabulary, length)


def rank_scores(scores: npt.NDArray[np.float32], seen: Sequence[npt.NDArray[np.int64]],
                targets: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Each target's 0-based rank among the items (columns; 0 is padding) its user has not
    had, as a worker filters them; a target without a finite score is a miss."""
    scores = scores.astype(np.float64, copy=True)
    scores[:, 0] = -np.inf
    ranks = np.empty(len(targets), dtype=np.int64)
    for row, (had, target) in enumerate(zip(seen, targets, strict=True)):
        line = scores[row]
        line[had[had != target]] = -np.inf
        own = line[target] if target > 0 else -np.inf
        ranks[row] = MISS if not np.isfinite(own) else int((line > own).sum())
    return ranks


def _seen(prefixes: Sequence[bytes], vocabulary: HashedVocabulary
          ) -> list[npt.NDArray[np.int64]]:
    return [vocabulary.lookup(stored_events(p)["item"]) for p in prefixes]


@torch.no_grad()
def model_ranks(model: BehaviourModel, prefixes: Sequence[bytes], targets: npt.NDArray[np.int64],
                vocabulary: HashedVocabulary, chunk: int = 256) -> npt.NDArray[np.int64]:
    model.eval()
    out = []
    table = model.item_table()
    for start in range(0, len(prefixes), chunk):
        part = prefixes[start:start + chunk]
        batch = stored_tokens(part, vocabulary, model.config.length)
        users = model.user_vectors(torch.from_numpy(batch.items), torch.from_numpy(batch.kinds),
                                   torch.from_numpy(batch.gaps))
        scores = (users @ table.T).numpy()
        out.append(rank_scores(scores, _seen(part, vocabulary), targets[start:start + chunk]))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def served_ranks(folder: Path, prefixes: Sequence[bytes], targets: npt.NDArray[np.int64],
                 vocabulary_ids: Sequence[str],
                 text_vector: Callable[[str], npt.NDArray[np.float32] | None]
                 ) -> npt.NDArray[np.int64]:
    """The ranks a served artefact gives the same targets, scored as a worker scores: its
    own vocabulary for the input, its rows (or an item's projected text) for the items."""
    from app.encoder.behaviour import SequenceModel

    served = SequenceModel.load(folder)
    vocabulary = HashedVocabulary(vocabulary_ids)
    served.space.sync(0, vocabulary_ids, text_vector)
    position = {item: n + 1 for n, item in enumerate(vocabulary_ids)}
    columns = np.array([position[i] for i in served.space.ids], dtype=np.int64)
    out = []
    for start in range(0, len(prefixes), 256):
        part = prefixes[start:start + 256]
        vectors = served.user_vectors(part)
        users = np.stack([v if v is not None else np.zeros(served.space.dim, np.float32)
                          for v in vectors])
        scores = np.full((len(part), len(vocabulary_ids) + 1), -np.inf, dtype=np.float32)
        if len(columns):
            scores[:, columns] = users @ served.space.matrix.T
        out.append(rank_scores(scores, _seen(part, vocabulary), targets[start:start + 256]))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _restore(optimizer: torch.optim.Adam, model: BehaviourModel, moments: Moments) -> None:
    """Put saved Adam moments back on ``model``'s parameters; the item table's rows for
    items added since start at zero, like a fresh parameter's."""
    for name, parameter in model.named_parameters():
        saved = moments.get(name)
        if saved is None:
            continue
        state = {}
        for key in ("exp_avg", "exp_avg_sq"):
            old = saved[key]
            if old.shape == parameter.shape:
                state[key] = old.clone()
            elif old.shape[1:] == parameter.shape[1:] and old.shape[0] <= parameter.shape[0]:
                grown = torch.zeros_like(parameter)
                grown[:old.shape[0]] = old
                state[key] = grown
        if len(state) == 2:
            optimizer.state[parameter] = {"step": saved["step"].clone(), **state}


def _moments(optimizer: torch.optim.Adam, model: BehaviourModel) -> Moments:
    out: Moments = {}
    for name, parameter in model.named_parameters():
        state = optimizer.state.get(parameter)
        if state:
            out[name] = {k: torch.as_tensor(v).detach().clone() for k, v in state.items()
                         if k in ("step", "exp_avg", "exp_avg_sq")}
    return out


def train_round(previous: Trained | None, history: StreamHistory,
                text: torch.Tensor | None, options: StreamOptions,
                progress: Progress = lambda stage, done, total: None) -> RoundResult:
    """One round over what the history holds now (see the module's description)."""
    started = time.perf_counter()
    torch.manual_seed(options.seed + history.rounds)
    rng = np.random.default_rng(options.seed + history.rounds)
    torch.set_num_threads(options.threads)
    ids = list(history.vocabulary)
    vocabulary = HashedVocabulary(ids)
    config = ModelConfig(items=len(ids), length=options.length, dim=options.dim,
                         blocks=options.blocks, heads=options.heads, dropout=options.dropout,
                         text_dim=0 if text is None else int(text.shape[1]))
    model = grow(None if previous is None else previous.model, config, text)
    fresh = history.fresh(options.valid_users)
    held = set(fresh)
    prefixes: list[bytes] = []
    wanted: list[int] = []
    for user in fresh:
        prefix, target = split_last(history.sequences[user])
        prefixes.append(prefix)
        wanted.append(target)
    targets = vocabulary.lookup(np.array(wanted, dtype=np.uint32))
    size = STORED.itemsize
    sequences = [(history.sequences[u][:-size] if u in held else history.sequences[u])
                 for u in history.users(2)]
    sequences = [s for s in sequences if len(s) >= 2 * size]
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr, betas=(0.9, 0.98))
    if previous is not None:
        _restore(optimizer, model, previous.moments)
    epochs = options.update_epochs if previous is not None else options.first_epochs
    curve = Curve()
    best: tuple[float, float, int, dict[str, torch.Tensor]] | None = None
    if previous is not None:
        ndcg, hr = ndcg_hr(model_ranks(model, prefixes, targets, vocabulary))
        best = (ndcg, hr, 0, _copy(model))
    steps = math.ceil(len(sequences) / options.batch)
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        total = 0.0
        for step, (inputs, next_items) in enumerate(training_batches(
                sequences, vocabulary, options.length, options.batch, rng)):
            hidden = model(torch.from_numpy(inputs.items), torch.from_numpy(inputs.kinds),
                           torch.from_numpy(inputs.gaps))
            goal = torch.from_numpy(next_items)
            mask = goal > 0
            loss = softmax_loss(hidden[mask], model.item_table(), goal[mask],
                                options.logits_bytes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            total += loss.item()
            progress(f"round {history.rounds + 1}, epoch {epoch}/{epochs}", step + 1, steps)
        ndcg, hr = ndcg_hr(model_ranks(model, prefixes, targets, vocabulary))
        curve.epochs.append(epoch)
        curve.loss.append(total / max(steps, 1))
        curve.valid_ndcg.append(ndcg)
        curve.valid_hr.append(hr)
        curve.seconds.append(time.perf_counter() - epoch_started)
        if best is None or ndcg > best[0]:
            best = (ndcg, hr, epoch, _copy(model))
    if best is None:   # no epochs asked, nothing before: the fresh model is the result
        ndcg, hr = ndcg_hr(model_ranks(model, prefixes, targets, vocabulary))
        best = (ndcg, hr, 0, _copy(model))
    latest = Trained(model, _moments(optimizer, model))
    candidate = BehaviourModel(config, text)
    candidate.load_state_dict(best[3])
    candidate.eval()
    return RoundResult(model=candidate, latest=latest, vocabulary=ids, curve=curve,
                       valid_ndcg=best[0], valid_hr=best[1], valid_users=len(prefixes),
                       best_epoch=best[2],
                       seconds=time.perf_counter() - started, valid_inputs=prefixes,
                       valid_targets=targets)


def softmax_loss(hidden: torch.Tensor, table: torch.Tensor, goal: torch.Tensor,
                 logits_bytes: int) -> torch.Tensor:
    """Full-softmax cross-entropy of ``hidden`` (positions x dim) against every row of
    ``table``, mean over positions, computed in chunks of positions whose logits fit in
    ``logits_bytes`` (each chunk's logits are recomputed in the backward pass instead of
    kept): the step's memory no longer grows with batch x length x items, only its time."""
    per_position = table.shape[0] * 4 * 4   # the logits, their softmax and gradients
    chunk = max(1, logits_bytes // per_position)
    if len(goal) <= chunk:
        return functional.cross_entropy(hidden @ table.T, goal)
    total = hidden.new_zeros(())
    for start in range(0, len(goal), chunk):
        part = checkpoint(_summed_entropy, hidden[start:start + chunk], table,
                          goal[start:start + chunk], use_reentrant=False)
        total = total + part
    return total / len(goal)


def _summed_entropy(hidden: torch.Tensor, table: torch.Tensor, goal: torch.Tensor
                    ) -> torch.Tensor:
    return functional.cross_entropy(hidden @ table.T, goal, reduction="sum")


def _copy(model: BehaviourModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- saving and resuming ---------------------------------------------------------------


def save_state(out: Path, history: StreamHistory, trained: Trained | None) -> None:
    """The history (with the offsets it reflects) and where training goes on from (the
    weights and the optimiser's moments), each replaced whole."""
    out.mkdir(parents=True, exist_ok=True)
    if trained is not None:
        tmp = out / "model.pt.tmp"
        torch.save({"model": trained.model.state_dict(),
                    "config": trained.model.config.as_dict(), "moments": trained.moments},
                   tmp)
        tmp.replace(out / "model.pt")
    tmp = out / "state.msgpack.tmp"
    tmp.write_bytes(history.dumps())
    tmp.replace(out / "state.msgpack")


def load_state(out: Path, keep: int) -> tuple[StreamHistory, Trained | None]:
    state = out / "state.msgpack"
    if not state.exists():
        return StreamHistory(keep=keep), None
    history = StreamHistory.loads(state.read_bytes())
    weights = out / "model.pt"
    if not weights.exists() or not history.rounds:
        return history, None
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    config = ModelConfig(**saved["config"])
    text = torch.zeros(config.items + 1, config.text_dim) if config.text_dim else None
    model = BehaviourModel(config, text)
    model.load_state_dict(saved["model"])
    return history, Trained(model, saved.get("moments", {}))


def plot_rounds(rounds: list[dict[str, Any]], path: Path) -> Path | None:
    """Validation NDCG@10 per round, the round's model against the served one, on the
    same held-back events."""
    from app.plots import pyplot

    plt = pyplot()
    if plt is None or not rounds:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    events = [r["events"] for r in rounds]
    ax.plot(events, [r["valid_ndcg@10"] for r in rounds], marker="o", label="this round's model")
    served = [(r["events"], r["served_valid_ndcg@10"]) for r in rounds
              if r.get("served_valid_ndcg@10") is not None]
    if served:
        ax.plot(*zip(*served, strict=True), marker="x", linestyle="--",
                label="the served model, same events")
    for r in rounds:
        if r.get("published"):
            ax.axvline(r["events"], color="tab:green", alpha=0.2)
    ax.set_xlabel("item events read")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title("stream training rounds (green: published)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the loop over the stream ----------------------------------------------------------


@dataclass
class Reader:
    """Decodes the three topics into the history; counts what it could not read."""

    history: StreamHistory
    events_topic: str
    items_topic: str
    users_topic: str
    skipped: dict[str, int] = field(default_factory=dict)
    forgotten: int = 0
    new_events: int = 0

    def __post_init__(self) -> None:
        self._check = validators(Limits())

    def apply(self, topic: str, key: bytes | None, value: bytes | None, now_ms: int) -> None:
        if topic == self.users_topic:
            if value is None and forget_rejection(key) is None and key is not None:
                self.forgotten += self.history.forget(key.decode())
            return
        if topic == self.items_topic:
            op = self._check.items(key, value, now_ms)
            if isinstance(op, Rejection):
                self._skip(topic, op)
            else:
                self.history.add_item(op)
            return
        event = self._check.events(key, value, now_ms)
        if isinstance(event, Rejection):
            self._skip(topic, event)
        elif self.history.add_event(event):
            self.new_events += 1

    def _skip(self, topic: str, rejection: Rejection) -> None:
        # the workers dead-letter what they cannot read; the trainer only counts it
        name = f"{topic}:{rejection.reason.value}"
        self.skipped[name] = self.skipped.get(name, 0) + 1


async def run(settings: Any, options: StreamOptions, out: Path, say: Say,
              progress: Progress, encoder: Callable[[], Any] | None = None) -> list[dict[str, Any]]:
    """Follow the stream and train rounds until ``options.rounds`` are done (0: forever);
    every round's record (what it measured, whether it was published)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from app.broker.security import client_security

    keep = options.length + 1
    history, trained = await asyncio.to_thread(load_state, out, keep)
    if history.rounds:
        say(f"resuming after round {history.rounds}: {history.events:,} item events, "
            f"{len(history.sequences):,} users, {len(history.vocabulary):,} items")
    topics = (settings.topic_events, settings.topic_items, settings.topic_users)
    reader = Reader(history, *topics)
    texts: TextVectors | None = None
    if options.text:
        made = (encoder or (lambda: _encoder(settings)))()
        texts = TextVectors(lambda batch: made.encode(batch, "passage"), made.dimension)
        await asyncio.to_thread(texts.load, out / "texts.msgpack")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers(), enable_auto_commit=False,
        group_id=f"{settings.app_id}-behaviour-trainer", auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024, **client_security(settings))
    await consumer.start()
    rounds: list[dict[str, Any]] = _read_rounds(out)
    try:
        partitions = await _partitions(settings, topics)
        consumer.assign(partitions)
        for tp in partitions:
            at = history.offsets.get(tp.topic, {}).get(tp.partition)
            if at is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, at)
        last_round = time.monotonic()
        done = 0
        waited = 0.0
        side = [tp for tp in partitions if tp.topic != settings.topic_events]
        while not options.rounds or done < options.rounds:
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            now_ms = int(time.time() * 1000)
            for tp, messages in batches.items():
                for message in messages:
                    reader.apply(tp.topic, message.key, message.value, now_ms)
                    history.offsets.setdefault(tp.topic, {})[tp.partition] = message.offset + 1
            if batches:
                progress("reading the stream", reader.new_events, options.every_events)
            due = reader.new_events >= options.every_events or (
                reader.new_events > 0
                and time.monotonic() - last_round >= options.interval_seconds)
            if not due:
                continue
            if not await _caught_up(consumer, side, history) and waited < 30:
                # the catalogue and forget requests first: a round trains on the newest
                # texts and never on a user whose forget request is already on the topic
                waited += 0.5
                continue
            waited = 0.0
            record = await _round(settings, options, out, history, reader, trained, texts,
                                  say, progress)
            trained = record.pop("_trained")
            rounds.append(record)
            (out / "rounds.json").write_text(json.dumps(rounds, indent=1) + "\n")
            await asyncio.to_thread(plot_rounds, rounds, out / "rounds.png")
            await consumer.commit({
                TopicPartition(topic, partition): OffsetAndMetadata(offset, "")
                for topic, by_partition in history.offsets.items()
                for partition, offset in by_partition.items()})
            reader.new_events = 0
            last_round = time.monotonic()
            done += 1
    finally:
        await consumer.stop()
    return rounds


async def _caught_up(consumer: Any, partitions: list[Any], history: StreamHistory) -> bool:
    """Whether everything on ``partitions`` (the items and users topics) is read."""
    ends = await consumer.end_offsets(partitions)
    return all(history.offsets.get(tp.topic, {}).get(tp.partition, 0) >= end
               for tp, end in ends.items())


def _read_rounds(out: Path) -> list[dict[str, Any]]:
    path = out / "rounds.json"
    if not path.exists():
        return []
    found: list[dict[str, Any]] = json.loads(path.read_text())
    return found


def _encoder(settings: Any) -> Any:
    from app.encoder.runtime import Encoder

    return Encoder(settings.model_dir())


async def _partitions(settings: Any, topics: Sequence[str], within: float = 60.0
                      ) -> list[Any]:
    from aiokafka import TopicPartition

    from app.broker.admin import partition_counts

    deadline = time.monotonic() + within
    while True:
        found = await partition_counts(settings, list(topics))
        if all(found.get(t) for t in topics):
            return [TopicPartition(t, p) for t in topics for p in range(found[t])]
        if time.monotonic() > deadline:
            missing = ", ".join(t for t in topics if not found.get(t))
            raise RuntimeError(f"topics not found within {within:.0f} s: {missing} "
                               f"(run `streamrec topics`)")
        await asyncio.sleep(1.0)


async def _round(settings: Any, options: StreamOptions, out: Path, history: StreamHistory,
                 reader: Reader, trained: Trained | None, texts: TextVectors | None,
                 say: Say, progress: Progress) -> dict[str, Any]:
    from app.tools import publish_behaviour, read_behaviour
    from app.train.export import export

    number = history.rounds + 1
    arrived = time.time()
    if texts is not None:
        await asyncio.to_thread(texts.update, history.texts, 256, progress)
    table = texts.table(history.vocabulary, history.texts) if texts is not None else None
    result = await asyncio.to_thread(train_round, trained, history, table, options, progress)
    folder = out / "versions" / f"round-{number}"
    record: dict[str, Any] = {
        "round": number, "events": history.events, "users": len(history.sequences),
        "items": len(result.vocabulary), "valid_users": result.valid_users,
        "valid_ndcg@10": round(result.valid_ndcg, 5), "valid_hr@10": round(result.valid_hr, 5),
        "best_epoch": result.best_epoch, "epochs": len(result.curve.epochs),
        "train_seconds": round(result.seconds, 1), "skipped": dict(reader.skipped),
        "forgotten": reader.forgotten}
    manifest_result = {"dataset": f"stream:{settings.topic_events}", GATE: result.valid_ndcg,
                       "valid_hr@10": result.valid_hr, "valid_users": result.valid_users,
                       "round": number, "events": history.events, "seed": options.seed}
    sample = stored_tokens(result.valid_inputs[:256] or [b""], HashedVocabulary(
        result.vocabulary), options.length)
    manifest = await asyncio.to_thread(export, result.model, result.vocabulary, sample, folder,
                                       manifest_result)
    record["version"] = manifest["version"]
    store = await read_behaviour(settings)
    served = store.served()
    theirs: float | None = None
    if served and store.complete(served) and result.valid_users:
        theirs = await asyncio.to_thread(
            _served_ndcg, store.files(served), out / "served" / served, result, history,
            texts)
    record["served"] = served or None
    record["served_valid_ndcg@10"] = None if theirs is None else round(theirs, 5)
    new = {"dataset": "same", GATE: result.valid_ndcg}
    better, why = publish_verdict(new, None if theirs is None else
                                  {"dataset": "same", GATE: theirs})
    if served == manifest["version"]:
        better, why = False, "the served model already is this one"
    if better or options.force:
        head, size = await publish_behaviour(settings, folder, f"stream round {number}",
                                   origin="trainer", store=store)
        record["published"] = head.version
        record["published_bytes"] = size
        why = why if better else f"forced: {why}"
    else:
        record["published"] = None
    record["why"] = why
    record["round_seconds"] = round(time.time() - arrived, 1)
    history.rounds = number
    await asyncio.to_thread(save_state, out, history, result.latest)
    if texts is not None:
        await asyncio.to_thread(texts.save, out / "texts.msgpack")
    _tidy(out / "versions", keep=3)
    say(f"round {number}: {history.events:,} item events, {len(history.sequences):,} users, "
        f"{len(result.vocabulary):,} items; {len(result.curve.epochs)} epochs in "
        f"{result.seconds:.0f} s; validation NDCG@10 {result.valid_ndcg:.4f} on "
        f"{result.valid_users:,} held-back events (served: "
        f"{'-' if theirs is None else f'{theirs:.4f}'}): "
        + (f"published {record['published']}" if record["published"] else f"kept ({why})"))
    record["_trained"] = result.latest
    return record


def _served_ndcg(files: dict[str, bytes], folder: Path, result: RoundResult,
                 history: StreamHistory, texts: TextVectors | None) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    try:
        ranks = served_ranks(
            folder, result.valid_inputs, result.valid_targets, result.vocabulary,
            (lambda item: texts.vector(history.texts, item)) if texts is not None
            else (lambda item: None))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return ndcg_hr(ranks)[0]


def _tidy(folder: Path, keep: int) -> None:
    if not folder.exists():
        return
    rounds = sorted((p for p in folder.iterdir() if p.name.startswith("round-")),
                    key=lambda p: int(p.name.split("-")[1]))
    for old in rounds[:-keep]:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)
