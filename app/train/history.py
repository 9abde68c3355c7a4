"""What the stream trainer keeps of the stream (pure, torch-free).

Each user's last item events, stored exactly as a worker stores them in user state
(``app.core.sequence.append``: 6 bytes an event, a view then a purchase of one item merged
into one event, the time-gap bucket fixed when the event is folded), so the model trains on
the very token arrays it is served on. Beside them: the time of the user's last event (for
the next gap), the round in which it arrived (validation uses only events no model has
trained on), the catalogue's texts (what the encoder reads for an item) and the vocabulary,
every item seen on the catalogue or in an event, in first-seen order: it only grows, so a
model's rows stay valid when the next round adds items.

Memory: ``keep`` events x 6 bytes per user (202 -> 1.2 KB) plus the dictionaries' own
overhead (~0.3 KB per user, measured in the unit tests' order of magnitude): about 1.5 GB
per million users; per item, its id and text (and, in the trainer, its 384-float text
vector, 1.5 KB).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from app.contract.records import Event, ItemDelete, ItemOp, ItemUpsert, Search
from app.core import sequence
from app.core.catalogue import item_text


class _Saved(msgspec.Struct, frozen=True):
    keep: int
    sequences: dict[str, bytes]
    last_ts: dict[str, int]
    arrived: dict[str, int]
    vocabulary: list[str]
    texts: dict[str, str]
    events: int
    rounds: int
    offsets: dict[str, dict[int, int]]


@dataclass
class StreamHistory:
    keep: int                                                   # item events kept per user
    sequences: dict[str, bytes] = field(default_factory=dict)
    last_ts: dict[str, int] = field(default_factory=dict)
    arrived: dict[str, int] = field(default_factory=dict)       # round of the last event
    vocabulary: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)         # catalogue item -> text
    events: int = 0                                             # item events folded
    rounds: int = 0                                             # training rounds done
    offsets: dict[str, dict[int, int]] = field(default_factory=dict)  # next to read
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {item: n for n, item in enumerate(self.vocabulary)}

    def _know(self, item_id: str) -> None:
        if item_id not in self._index:
            self._index[item_id] = len(self.vocabulary)
            self.vocabulary.append(item_id)

    def add_event(self, event: Event) -> bool:
        """Fold one event as a worker does (a search carries no item: ignored); True when
        it was an item event."""
        if isinstance(event, Search):
            return False
        user = event.user_id
        previous = self.last_ts.get(user)
        kind = str(type(event).__struct_config__.tag)
        self.sequences[user] = sequence.append(
            self.sequences.get(user, b""), event.item_id, kind,
            None if previous is None else event.ts - previous, self.keep)
        self.last_ts[user] = event.ts   # as the worker: the gap is to the last one folded
        self.arrived[user] = self.rounds
        self._know(event.item_id)
        self.events += 1
        return True

    def add_item(self, op: ItemOp) -> None:
        """A catalogue change: an upsert's text is what the encoder reads for the item; a
        delete drops the text (the item keeps its vocabulary place and learnt row)."""
        if isinstance(op, ItemUpsert):
            self.texts[op.item_id] = item_text(op)
            self._know(op.item_id)
        elif isinstance(op, ItemDelete):
            self.texts.pop(op.item_id, None)

    def forget(self, user_id: str) -> bool:
        """Delete everything kept about a user (a tombstone on ``users``)."""
        found = user_id in self.sequences
        for table in (self.sequences, self.last_ts, self.arrived):
            table.pop(user_id, None)
        return found

    def users(self, at_least: int) -> list[str]:
        """Users with at least ``at_least`` item events, in a fixed order."""
        size = sequence.STORED.itemsize
        return sorted(u for u, s in self.sequences.items() if len(s) >= at_least * size)

    def fresh(self, limit: int) -> list[str]:
        """Users whose last event arrived since the last round (no model has trained on
        it) and who have an event before it, newest first, at most ``limit``."""
        size = sequence.STORED.itemsize
        found = [u for u, r in self.arrived.items()
                 if r == self.rounds and len(self.sequences[u]) >= 2 * size]
        found.sort(key=lambda u: (-self.last_ts[u], u))
        return found[:limit]

    def dumps(self) -> bytes:
        return msgspec.msgpack.encode(_Saved(
            keep=self.keep, sequences=self.sequences, last_ts=self.last_ts,
            arrived=self.arrived, vocabulary=self.vocabulary, texts=self.texts,
            events=self.events, rounds=self.rounds, offsets=self.offsets))

    @classmethod
    def loads(cls, data: bytes) -> StreamHistory:
        saved = msgspec.msgpack.decode(data, type=_Saved)
        return cls(keep=saved.keep, sequences=dict(saved.sequences),
                   last_ts=dict(saved.last_ts), arrived=dict(saved.arrived),
                   vocabulary=list(saved.vocabulary), texts=dict(saved.texts),
                   events=saved.events, rounds=saved.rounds,
                   offsets={t: dict(p) for t, p in saved.offsets.items()})


def split_last(stored: bytes) -> tuple[bytes, int]:
    """A stored sequence without its last event, and that event's item hash: validation's
    input and target."""
    size = sequence.STORED.itemsize
    last = sequence.stored_events(stored[-size:])
    return stored[:-size], int(last["item"][0])
