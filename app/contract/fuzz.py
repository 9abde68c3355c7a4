"""Hostile input records, generated: what a careless or malicious producer can put on the
input topics (and on the compacted topics every worker follows), for `streamrec soak fuzz`
and the property tests.

Every record starts as a valid record of its topic and goes through one or more mutations
(bytes cut, flipped or replaced; fields of the wrong type, missing, too long or out of
range; keys missing, mismatched or not UTF-8; nesting, width and size past the limits;
tombstones; plain noise). A share stays valid, so a soak also does real work around the
hostile records. Deterministic for a seed; pure (no Kafka here).

What the worker must do with each record is decided by :func:`expected`, the contract's
validator run on the same bytes (the unit tests check the validator's reasons on known
cases; the soak checks the worker does exactly what it says, once, whatever the record).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from app.contract.validate import Rejection, Validators, forget_rejection

INPUT_TOPICS: tuple[str, ...] = ("events", "items", "feedback", "users")
# the share of each input topic in a generated stream
TOPIC_WEIGHTS: tuple[float, ...] = (0.55, 0.15, 0.15, 0.15)
COMPACTED_INPUTS = frozenset({"items", "users"})   # cleanup.policy=compact (app.broker.admin)
BASE_TS = 1_700_000_000_000

_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Hostile:
    """One generated record: the logical topic it goes to, its key and value, and the
    mutations that made it (empty: left valid)."""

    topic: str
    key: bytes | None
    value: bytes | None
    mutations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Space:
    """The ids records are drawn from: bounded, so a long soak's valid records update a
    fixed set of states instead of growing them."""

    users: int = 5_000
    items: int = 1_000


def _base(rng: random.Random, topic: str, n: int, space: Space) -> dict[str, Any]:
    """A valid record of ``topic`` (its payload, before encoding), ``n`` makes it unique."""
    user = f"u-{rng.randrange(space.users)}"
    item = f"i-{rng.randrange(space.items)}"
    ts = BASE_TS + n
    if topic == "events":
        kind = rng.choice(("view", "view", "view", "search", "add_to_cart", "purchase"))
        body: dict[str, Any] = {"v": 1, "type": kind, "event_id": f"fz-{n}", "user_id": user,
                                "ts": ts}
        if kind == "search":
            body["query"] = rng.choice(("space adventure", "comedy", "old westerns", "jazz"))
        else:
            body["item_id"] = item
        if kind == "purchase":
            body["price"] = round(rng.uniform(1, 100), 2)
            body["currency"] = "EUR"
        if rng.random() < 0.2:
            body["context"] = {"device": rng.choice(("ios", "web")), "page": rng.randrange(9)}
        return body
    if topic == "items":
        if rng.random() < 0.1:
            return {"v": 1, "op": "delete", "event_id": f"fz-{n}", "item_id": item, "ts": ts}
        return {"v": 1, "op": "upsert", "event_id": f"fz-{n}", "item_id": item, "ts": ts,
                "title": f"Item {item} {rng.choice(('red', 'blue', 'quiet', 'loud'))}",
                "category": rng.choice(("Drama", "Comedy", "Jazz")),
                "price": round(rng.uniform(1, 50), 2)}
    if topic == "feedback":
        return {"v": 1, "type": rng.choice(("impression", "click", "purchase")),
                "event_id": f"fz-{n}", "user_id": user, "rec_id": f"r-{rng.randrange(99)}",
                "item_id": item, "ts": ts, "position": rng.randrange(10)}
    return {"v": 1, "event_id": f"fz-{n}", "user_id": user, "ts": ts,
            "age_band": rng.choice(("18-24", "25-34", "35-44")), "gender": "F"}


def key_field(topic: str) -> str:
    return "item_id" if topic == "items" else "user_id"


# --- mutations: (rng, payload dict, key, encoded value) -> (key, value) ------------------

Record = tuple[bytes | None, bytes | None]
Mutation = Callable[[random.Random, dict[str, Any], bytes | None, bytes], Record]

_ODD_VALUES: tuple[Any, ...] = (
    None, True, 0, -1, 2**63, 2**64 + 1, -(2**70), 1.5, -0.0, 1e308, "", "x", "\x00",
    [], [1, "a"], {}, {"a": {"b": 1}}, "9" * 40, "\U0001f600" * 3,
)
_PACKABLE = tuple(v for v in _ODD_VALUES if not isinstance(v, int) or -(2**63) <= v < 2**64)
_BAD_UTF8: tuple[bytes, ...] = (b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf",
                                b"\xf8\x88\x80\x80\x80", b"\x80")
_NUMBER_TOKENS: tuple[bytes, ...] = (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400",
                                     b"0x10", b"01", b"1.", b".5", b"+1", b"1e", b"--1")
_ESCAPES: tuple[str, ...] = ("\\ud800", "\\udfff", "\\ud83d", "\\u0000", "\\uffff",
                             "\\u", "\\x41", "\\ud800\\ud800")


def _encode(body: dict[str, Any]) -> bytes:
    return _json.encode(body)


def _truncate(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
              ) -> Record:
    return key, raw[:rng.randrange(len(raw))]


def _bitflip(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
             ) -> Record:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return key, bytes(data)


def _splice_bytes(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
                  ) -> Record:
    at = rng.randrange(len(raw))
    noise = rng.choice(_BAD_UTF8) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 16))
    return key, raw[:at] + noise + raw[at + rng.randint(0, 4):]


def _wrong_type(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
                ) -> Record:
    field = rng.choice(sorted(body))
    return key, _encode({**body, field: rng.choice(_ODD_VALUES)})


def _drop_field(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
                ) -> Record:
    field = rng.choice(sorted(body))
    return key, _encode({k: v for k, v in body.items() if k != field})


def _odd_tag(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
             ) -> Record:
    field = rng.choice([f for f in ("type", "op", "v") if f in body])
    value = rng.choice(("teleport", "", "VIEW", "view ", 2, 0, "1", None, 1.0))
    return key, _encode({**body, field: value})


def _extreme_number(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
                    ) -> Record:
    numbers = [f for f in ("ts", "price", "quantity", "position") if f in body] or ["ts"]
    value = rng.choice((-1, 0, 2**63 - 1, 2**64, 4_102_444_800_000, 631_151_999_999, 1e9 + 1,
                        100_001, 10_001, 0.5))
    return key, _encode({**body, rng.choice(numbers): value})


def _number_token(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
                  ) -> Record:
    return key, raw.replace(str(body["ts"]).encode(), rng.choice(_NUMBER_TOKENS), 1)


def _escape(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
            ) -> Record:
    """A string field holding a lone surrogate, a NUL or a broken escape (JSON text); when
    it is the key field, half the time the key carries the same text (surrogates as
    their bytes: not UTF-8)."""
    field = rng.choice([f for f, v in body.items() if isinstance(v, str)])
    escape = rng.choice(_ESCAPES).encode()
    value = _encode({**body, field: "a\x01b"}).replace(b"\\u0001", escape)
    if field == key_field_of(body) and rng.random() < 0.5:
        try:
            text: str = msgspec.json.decode(b'"a' + escape + b'b"')
        except msgspec.DecodeError:
            return key, value
        key = text.encode("utf-8", "surrogatepass")
    return key, value


def key_field_of(body: dict[str, Any]) -> str:
    return "user_id" if "user_id" in body else "item_id"


def _long_string(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
                 ) -> Record:
    field = rng.choice([f for f, v in body.items() if isinstance(v, str)])
    length = rng.choices((129, 257, 513, 8_193, 70_000), (30, 30, 30, 9, 1))[0]
    text = rng.choice(("x", "\u00e9", "\U0001f600")) * length
    if field == key_field_of(body) and rng.random() < 0.5:
        key = text.encode()
    return key, _encode({**body, field: text})


def _deep(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes) -> Record:
    depth = rng.choices((17, 40, 1_000, 5_000, 60_000), (30, 30, 30, 9, 1))[0]
    opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
    nest = opener * depth + b"0" + closer * depth
    if rng.random() < 0.3:
        nest = opener * depth   # never closed
    return key, raw[:-1] + b',"deep":' + nest + b"}"


def _wide(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes) -> Record:
    width = rng.choice((65, 1_000, 5_000))
    field = "context" if "type" in body and "rec_id" not in body else "attributes"
    return key, _encode({**body, field: {f"k{i}": i for i in range(width)}})


def _key(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes) -> Record:
    choice = rng.randrange(7)
    if choice == 0:
        return None, raw
    if choice == 1:
        return b"", raw
    if choice == 2:
        return b"somebody-else", raw
    if choice == 3:
        return (key or b"") + rng.choice(_BAD_UTF8), raw
    if choice == 4:
        return rng.choice(_BAD_UTF8), raw
    if choice == 5:
        return b"k" * rng.choice((129, 5_000)), raw
    return (key or b"").upper() + b"\x00", raw


def _tombstone(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
               ) -> Record:
    """No value: on ``users`` a request to forget the key's user. The key moves to users
    that have nothing else (``gone-...``), so what a soak expects of the others' state does
    not depend on how the worker interleaves two topics."""
    return (None if key is None else b"gone-" + key), None


def _empty(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes) -> Record:
    return key, rng.choice((b"", b" ", b"\n", b"null", b"{}", b"[]", b"0", b'""'))


def _noise(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes) -> Record:
    return key, rng.randbytes(rng.choice((1, 7, 70, 700, 7_000)))


def _oversize(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
              ) -> Record:
    pad = rng.choices((70_000, 300_000, 1_040_000), (6, 3, 1))[0]
    return key, raw[:-1] + b',"pad":"' + b"p" * pad + b'"}'


def _wrapper(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
             ) -> Record:
    """Valid JSON around the record: a BOM, whitespace, an array, a second document."""
    return key, rng.choice((b"\xef\xbb\xbf" + raw, b"  \n" + raw + b"\t ", b"[" + raw + b"]",
                            raw + raw, raw + b"garbage", raw.replace(b":", b" : ")))


def _duplicate_field(rng: random.Random, body: dict[str, Any], key: bytes | None, raw: bytes
                     ) -> Record:
    field = key_field_of(body)
    return key, raw[:-1] + b',"' + field.encode() + b'":"someone-else"}'


MUTATIONS: dict[str, Mutation] = {
    "truncate": _truncate, "bitflip": _bitflip, "splice_bytes": _splice_bytes,
    "wrong_type": _wrong_type, "drop_field": _drop_field, "odd_tag": _odd_tag,
    "extreme_number": _extreme_number, "number_token": _number_token, "escape": _escape,
    "long_string": _long_string, "deep": _deep, "wide": _wide, "key": _key,
    "tombstone": _tombstone, "empty": _empty, "noise": _noise, "oversize": _oversize,
    "wrapper": _wrapper, "duplicate_field": _duplicate_field,
}
# rare, costly or loud ones are drawn less often
_WEIGHTS: dict[str, float] = {"oversize": 0.01, "deep": 0.3, "wide": 0.3, "noise": 0.5}


def hostile_records(count: int, seed: int = 0, valid_share: float = 0.2,
                    space: Space = Space()) -> Iterator[Hostile]:
    """``count`` records over the input topics (``TOPIC_WEIGHTS``): a ``valid_share`` left
    valid, the others mutated once (a fifth of them twice or three times)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    names = list(MUTATIONS)
    weights = [_WEIGHTS.get(name, 1.0) for name in names]
    for n in range(count):
        topic = rng.choices(INPUT_TOPICS, TOPIC_WEIGHTS)[0]
        body = _base(rng, topic, n, space)
        key: bytes | None = str(body[key_field(topic)]).encode()
        value: bytes | None = _encode(body)
        applied: tuple[str, ...] = ()
        if rng.random() >= valid_share:
            rounds = 1 if rng.random() < 0.8 else rng.randint(2, 3)
            for name in rng.choices(names, weights, k=rounds):
                if value is None:
                    break
                key, value = MUTATIONS[name](rng, body, key, value or b"{}")
                applied += (name,)
        if key is None and (value is None or topic in COMPACTED_INPUTS):
            # no client sends a record of nothing, and the broker refuses a keyless record
            # on a compacted topic (with the whole batch it travels in): an empty key there
            key = b""
        yield Hostile(topic, key, value, applied)


def followed_records(count: int, seed: int = 0) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Records for a compacted topic every worker follows (catalogue, models): noise,
    msgpack of the wrong shape, tombstones with odd keys. None of them is a valid entry."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    pack = msgspec.msgpack.Encoder()
    for _ in range(count):
        choice = rng.randrange(6)
        key = rng.choice((None, b"", b"\xff", b"fz-item", b"behaviour-head", b"ranker-head",
                          b"behaviour:x/0"))
        if choice == 0:
            yield key or b"", None
        elif choice == 1:
            yield key, rng.randbytes(rng.choice((1, 30, 3_000)))
        elif choice == 2:
            yield key, pack.encode([rng.choice(_PACKABLE) for _ in range(rng.randrange(12))])
        elif choice == 3:
            yield key, pack.encode({"item_id": "fz", "vector": rng.randbytes(7)})
        elif choice == 4:
            yield key, b'{"version": "x", "sha256": 1}'
        else:
            yield key, pack.encode(rng.choice(_PACKABLE))


def expected(checks: Validators, topic: str, key: bytes | None, value: bytes | None,
             now_ms: int) -> Rejection | None:
    """What the worker must do with a record of input ``topic``: the rejection it must
    dead-letter, or None (apply it; a users tombstone forgets its key's user)."""
    if topic == "users" and value is None:
        return forget_rejection(key)
    outcome = getattr(checks, topic)(key, value, now_ms)
    return outcome if isinstance(outcome, Rejection) else None

