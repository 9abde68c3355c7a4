"""The event contract, version 1: every record StreamRec reads or writes.

The structs here are the single source of truth. The JSON Schema files in
``app/contract/schemas/`` are generated from them (``streamrec schemas --write``) and a test
fails when the two drift apart. All structs are frozen; decoding validates types, required
fields and bounds in one pass (msgspec), so a record either becomes one of these values or
a rejection with a reason (see ``app.contract.validate``).

Times are epoch milliseconds (UTC). Ids are opaque strings of 1 to 128 characters.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

SCHEMA_VERSION = 1

ID_MAX_CHARS = 128
Id = Annotated[str, Meta(min_length=1, max_length=ID_MAX_CHARS,
                          description="Opaque id, 1-128 chars.")]
EpochMs = Annotated[int, Meta(ge=0, description="Event time, epoch milliseconds (UTC).")]
Version = Annotated[Literal[1], Meta(description="Schema version of this record.")]
AttrKey = Annotated[str, Meta(min_length=1, max_length=64)]
AttrValue = str | int | float | bool
Attributes = Annotated[
    dict[AttrKey, AttrValue], Meta(max_length=64, description="Free attributes, at most 64.")
]
ShortText = Annotated[str, Meta(max_length=256)]
Quantity = Annotated[int, Meta(ge=1, le=100_000)]
Price = Annotated[float, Meta(ge=0.0, le=1e9)]


# --- events (key: user_id) ---------------------------------------------------------------


class _UserEvent(Struct, frozen=True, kw_only=True, tag_field="type"):
    v: Version
    event_id: Id
    user_id: Id
    ts: EpochMs
    session_id: Id | None = None
    tenant: Id = "default"
    context: Attributes = {}


class View(_UserEvent, frozen=True, kw_only=True, tag="view"):
    """The user browsed an item."""

    item_id: Id


class Search(_UserEvent, frozen=True, kw_only=True, tag="search"):
    """The user searched; `result_item_ids` are the items the search showed, if known."""

    query: Annotated[str, Meta(min_length=1, max_length=512)]
    result_item_ids: Annotated[list[Id], Meta(max_length=200)] | None = None


class AddToCart(_UserEvent, frozen=True, kw_only=True, tag="add_to_cart"):
    """The user put an item in the cart."""

    item_id: Id
    quantity: Quantity = 1


class Purchase(_UserEvent, frozen=True, kw_only=True, tag="purchase"):
    """The user bought an item."""

    item_id: Id
    price: Price
    quantity: Quantity = 1
    currency: Annotated[str, Meta(pattern="^[A-Z]{3}$")] | None = None


Event = View | Search | AddToCart | Purchase
EVENT_TYPES: tuple[str, ...] = ("view", "search", "add_to_cart", "purchase")


# --- items (key: item_id) ----------------------------------------------------------------


class _ItemOp(Struct, frozen=True, kw_only=True, tag_field="op"):
    v: Version
    event_id: Id
    item_id: Id
    ts: EpochMs
    tenant: Id = "default"


class ItemUpsert(_ItemOp, frozen=True, kw_only=True, tag="upsert"):
    """Create or replace a catalogue item."""

    title: Annotated[str, Meta(min_length=1, max_length=512)]
    description: Annotated[str, Meta(max_length=8192)] = ""
    category: ShortText = ""
    brand: ShortText = ""
    price: Price | None = None
    in_stock: bool = True
    attributes: Attributes = {}


class ItemDelete(_ItemOp, frozen=True, kw_only=True, tag="delete"):
    """Remove an item from the catalogue."""


ItemOp = ItemUpsert | ItemDelete


# --- feedback (key: user_id) -------------------------------------------------------------


class FeedbackType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    FAVOURITE = "favourite"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"


class Feedback(Struct, frozen=True, kw_only=True):
    """A reaction to a recommendation: `rec_id` and `item_id` name what it answers."""

    v: Version
    type: FeedbackType
    event_id: Id
    user_id: Id
    rec_id: Id
    item_id: Id
    ts: EpochMs
    position: Annotated[int, Meta(ge=0, le=10_000)] | None = None
    session_id: Id | None = None
    tenant: Id = "default"


# --- users (key: user_id) ----------------------------------------------------------------


class UserProfile(Struct, frozen=True, kw_only=True):
    """Profile attributes of a user, when known; features for new users."""

    v: Version
    event_id: Id
    user_id: Id
    ts: EpochMs
    age_band: ShortText | None = None
    gender: ShortText | None = None
    locale: ShortText | None = None
    occupation: ShortText | None = None
    tenant: Id = "default"
    attributes: Attributes = {}


# --- recommendations (output, key: user_id) ----------------------------------------------


class Explanation(Struct, frozen=True, kw_only=True):
    """Why an item was recommended, for a person to read."""

    kind: Literal["history", "search", "covisit", "popular", "profile"]
    text: str
    item_id: str | None = None
    query: str | None = None


class RecommendedItem(Struct, frozen=True, kw_only=True):
    item_id: str
    rank: int
    score: float
    explanation: Explanation


class Recommendation(Struct, frozen=True, kw_only=True):
    """Ranked, explained recommendations for one user, produced after one of their events."""

    v: Version
    rec_id: str
    user_id: str
    items: list[RecommendedItem]
    model_version: str
    source_event_id: str
    source_event_time: int
    produced_at: int
    tenant: str = "default"


# --- topic -> schema, for the schema files and the validator ------------------------------

SCHEMA_TYPES: dict[str, object] = {
    "events": Event,
    "items": ItemOp,
    "feedback": Feedback,
    "users": UserProfile,
    "recommendations": Recommendation,
}


def json_schema(name: str) -> dict[str, object]:
    """The JSON Schema (2020-12) of one topic's records."""
    schema: dict[str, object] = msgspec.json.schema(SCHEMA_TYPES[name])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://streamrec.dev/schemas/{name}.v{SCHEMA_VERSION}.json"
    schema["title"] = f"StreamRec {name} record, version {SCHEMA_VERSION}"
    return schema
