"""The HTTP API's requests and answers as typed models, and its OpenAPI document generated
from them (docs/api.md; `streamrec schemas` writes docs/openapi.json, every worker serves it
at ``/openapi.json``).

The views in app.worker.web build their answers from these models, and the pull API's query
is parsed by one, so the document cannot drift from what a worker answers: the integration
tests decode every answer with the model the document names for it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect
from msgspec import Meta, Struct

from app import __version__
from app.contract.records import RecommendedItem
from app.core.recommender import Request

MAX_K = 100
ErrorCode = Literal["bad_parameter", "unauthorized", "unknown_user", "unknown_item"]
_TRUE, _FALSE = ("yes", "on"), ("no", "off", "")


# --- requests ------------------------------------------------------------------------------


class RecommendationsQuery(Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Query parameters of ``GET /users/{user_id}/recommendations``. A parameter not listed
    is refused (400), so a misspelt filter never passes unnoticed."""

    k: Annotated[int, Meta(ge=1, le=MAX_K, description="How many items.")] = 10
    exclude: Annotated[str, Meta(description="Comma-separated item ids never to return.")] = ""
    category: Annotated[str, Meta(
        description="Comma-separated categories to choose from (trimmed, lower case).")] = ""
    not_category: Annotated[str, Meta(
        description="Comma-separated categories never to return.")] = ""
    include_seen: Annotated[bool, Meta(
        description="Also return items the user consumed before (purchases stay out).")] = False
    fresh: Annotated[bool, Meta(
        description="Score now even when the user's latest computed list could answer.")] = False
    at: Annotated[Annotated[int, Meta(ge=0)] | None, Meta(
        description="The time to recommend for, in ms since the epoch (event time; "
        "scored afresh). Default: the worker's clock, the newest event time it has read, "
        "so a user back after a while is treated as away since their last event.")] = None

    def request(self) -> Request:
        allow = _csv(self.category)
        return Request(k=self.k, exclude=_csv(self.exclude), allow_categories=allow or None,
                       deny_categories=_csv(self.not_category),
                       exclude_seen=not self.include_seen)


def parse_query(query: Any) -> RecommendationsQuery | str:
    """The pull API's query parameters (a mapping of strings; a repeated parameter's first
    value counts), or why they are refused. Booleans read 1/true/yes/on as true and
    0/false/no/off or an empty value as false, in any case."""
    given: dict[str, str] = {}
    for name in query:
        given.setdefault(name, str(query[name]))
    for name in _BOOLEANS & given.keys():
        value = given[name].strip().lower()
        given[name] = "true" if value in _TRUE else "false" if value in _FALSE else value
    try:
        return msgspec.convert(given, RecommendationsQuery, strict=False)
    except msgspec.ValidationError as exc:
        return _readable(str(exc))


def _readable(message: str) -> str:
    """msgspec's "Expected `int` >= 1 - at `$.k`" as "k: expected `int` >= 1"."""
    reason, _, where = message.partition(" - at `$.")
    if not where:
        return reason.replace("Object contains unknown field", "unknown query parameter")
    return f"{where.rstrip('`')}: {reason[:1].lower()}{reason[1:]}"


def _csv(value: str) -> frozenset[str]:
    return frozenset(v.strip() for v in value.split(",") if v.strip())


_QUERY_INFO = msgspec.inspect.type_info(RecommendationsQuery)
assert isinstance(_QUERY_INFO, msgspec.inspect.StructType)
_BOOLEANS = {f.name for f in _QUERY_INFO.fields
             if isinstance(getattr(f.type, "type", f.type), msgspec.inspect.BoolType)}


# --- answers -------------------------------------------------------------------------------


class Answer(Struct, forbid_unknown_fields=True, kw_only=True):
    """An answer body: decoding one with a field the model lacks fails (tests)."""


class ApiError(Answer):
    """Every 4xx answer: what is wrong, for a person, and a code, for a program."""

    error: str
    code: ErrorCode


class Health(Answer):
    status: Literal["ok"]


class Readiness(Answer):
    ready: bool


class Recommendations(Answer):
    user_id: str
    known_user: Annotated[bool, Meta(
        description="False: the cold-start answer (popular items, the profile's segments').")]
    variant: Annotated[str, Meta(description="The user's A/B variant.")]
    model_version: Annotated[str, Meta(description="The ranker version the list came from.")]
    items: list[RecommendedItem]


class RecentEvent(Answer):
    item_id: str
    type: str
    ts: int


class UserView(Answer):
    """A debug view of one user's state (held by the worker owning their partition)."""

    user_id: str
    profile: Annotated[bool, Meta(description="Whether a profile is held.")]
    feedback_state: Annotated[bool, Meta(description="Whether remembered lists are held.")]
    counts: Annotated[dict[str, int], Meta(description="Events by type.")]
    first_ts: int
    last_ts: int
    recent: list[RecentEvent]
    purchased: int
    consumed: Annotated[int, Meta(description="Items in the consumed-set.")]
    sequence_events: Annotated[int, Meta(description="Events the behaviour model reads.")]
    interest_weight: float
    last_search: str | None
    state_bytes: int


class Neighbour(Answer):
    item_id: str
    cosine: float


class Covisited(Answer):
    item_id: str
    strength: float


class ItemView(Answer):
    """A debug view of a catalogue item (answered by any worker)."""

    item_id: str
    title: str
    category: str
    in_stock: bool
    similar: Annotated[list[Neighbour], Meta(description="The 5 nearest by text vector.")]
    covisited: Annotated[list[Covisited], Meta(description="The 5 strongest co-visitations.")]


class RankerVersion(Answer):
    version: str
    generation: int
    weights: Annotated[dict[str, float], Meta(description="Weight by ranker feature.")]
    examples_seen: int
    origin: str
    note: str
    published_at: Annotated[int, Meta(description="Epoch milliseconds.")]
    projection: Annotated[str | None, Meta(description="The tuned W1 served (None: identity).")]


class VariantServed(Answer):
    share: float
    version: str
    projection: str | None


class BehaviourModel(Answer):
    version: str
    config: dict[str, Any] | None
    result: dict[str, Any] | None
    vocabulary: Annotated[int, Meta(description="Items the model learnt an embedding for.")]
    catalogue_items_scored: int
    scored_from_text: Annotated[int, Meta(
        description="Catalogue items scored from their text alone (never seen in training).")]
    scale: Annotated[float, Meta(
        description="What the model's feature is multiplied by in the ranker: chosen online "
                    "from users' next items (scale_evidence), else the artefact's own "
                    "choice (1 when it has none).")] = 1.0
    scale_evidence: Annotated[dict[str, Any] | None, Meta(
        description="What the online choice of the scale rests on: lists scored by the "
                    "user's next item and their mean DCG@k at each scale (none when the "
                    "choice is off).")] = None


class ModelView(Answer):
    """The A/B experiment, the learning variant's versions and the behaviour model served."""

    experiment: str
    variants: dict[str, VariantServed]
    head: RankerVersion | None
    checkpoints: list[RankerVersion]
    behaviour_model: BehaviourModel | None


def encode(answer: Answer) -> bytes:
    return msgspec.json.encode(answer)


# --- the document --------------------------------------------------------------------------


class Route(Struct, frozen=True):
    path: str
    summary: str
    answers: dict[int, type[Answer] | None]     # status -> body model (None: not JSON)
    query: type[Struct] | None = None
    guarded: bool = True                        # needs the bearer token when one is set


ROUTES = (
    Route("/users/{user_id}/recommendations",
          "Ranked, explained recommendations for the user's current state.",
          {200: Recommendations, 400: ApiError, 401: ApiError}, RecommendationsQuery),
    Route("/users/{user_id}", "Debug view of the user's state.",
          {200: UserView, 401: ApiError, 404: ApiError}),
    Route("/items/{item_id}", "Debug view of a catalogue item.",
          {200: ItemView, 401: ApiError, 404: ApiError}),
    Route("/model", "The experiment and the ranker and behaviour model versions served.",
          {200: ModelView, 401: ApiError}),
    Route("/health", "200 while the process runs.", {200: Health}, guarded=False),
    Route("/ready", "200 once the worker serves its share; 503 otherwise.",
          {200: Readiness, 503: Readiness}, guarded=False),
    Route("/metrics", "Prometheus metrics (text exposition format).", {200: None},
          guarded=False),
    Route("/openapi.json", "This document.", {200: None}, guarded=False),
)

_STATUS = {200: "OK", 400: "Bad request", 401: "Missing or wrong bearer token",
           404: "Not found", 503: "Not ready"}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the worker's HTTP API."""
    models = sorted({m for r in ROUTES for m in r.answers.values() if m is not None},
                    key=lambda m: m.__name__)
    _, components = msgspec.json.schema_components(
        models, ref_template="#/components/schemas/{name}")
    paths = {route.path: {"get": _operation(route)} for route in ROUTES}
    return {
        "openapi": "3.1.0",
        "info": {"title": "StreamRec worker API", "version": __version__,
                 "description": "User routes may be asked of any worker: they are forwarded "
                                "to the worker owning the user's partition. See docs/api.md."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "Only when STREAMREC_API_TOKEN is set."}}},
    }


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": route.summary, "responses": {}}
    parameters = [{"name": name[1:-1], "in": "path", "required": True,
                   "schema": {"type": "string"}}
                  for name in route.path.split("/") if name.startswith("{")]
    if route.query is not None:
        schema = msgspec.json.schema(route.query)["$defs"][route.query.__name__]
        for name, prop in schema["properties"].items():
            parameters.append({"name": name, "in": "query", "required": False,
                               "description": prop.pop("description", ""), "schema": prop})
    if parameters:
        operation["parameters"] = parameters
    if route.guarded:
        operation["security"] = [{}, {"bearer": []}]
    for status, model in route.answers.items():
        content = ({"text/plain": {"schema": {"type": "string"}}} if model is None else
                   {"application/json": {"schema": {
                       "$ref": f"#/components/schemas/{model.__name__}"}}})
        operation["responses"][str(status)] = {"description": _STATUS[status],
                                               "content": content}
    return operation
