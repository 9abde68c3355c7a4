"""The worker's HTTP views: metrics, health, readiness, and the pull API (docs/api.md).

User routes are routed by Faust to the worker that owns the user's partition (their state
lives only there); item routes answer from any worker (each holds the whole catalogue).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.core.consumed import size as consumed_size
from app.core.forgetting import is_marker
from app.core.ranking import FEATURES
from app.core.sequence import STORED
from app.core.serving import purchases
from app.core.state import StateCodec, UserState
from app.core.versions import ModelVersion
from app.metrics import Metrics
from app.worker import api
from app.worker.declarations import Declarations

if TYPE_CHECKING:
    from app.worker.pipeline import Pipeline

_codec = StateCodec(UserState)


def is_ready(app: Any) -> bool:
    """Ready once the worker's group has assigned it its share and table recovery of that
    share has finished. The share may be empty (more workers than Faust gives partitions
    to): such a worker still serves every API route by forwarding to the owners, so it is
    ready; asking for partitions kept a worker that joined a group of two on four
    partitions unready for good (`streamrec soak crash`)."""
    recovery = app.tables.recovery
    return bool(not app.rebalancing and recovery.completed.is_set())


def authorized(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries ``token`` as a bearer token (no token set:
    every request is). Compared in constant time."""
    if not token:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


View = Callable[..., Awaitable[Any]]


def guarded(token: str) -> Callable[[View], View]:
    """A view that answers 401 unless the request carries the API token (checked before the
    request is routed to the owner of a user)."""
    def wrap(view: View) -> View:
        @functools.wraps(view)
        async def checked(web: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            if not authorized(request.headers.get("Authorization"), token):
                return _answer(web, api.ApiError(
                    error="missing or wrong bearer token (STREAMREC_API_TOKEN)",
                    code="unauthorized"), status=401, headers={"WWW-Authenticate": "Bearer"})
            return await view(web, request, *args, **kwargs)
        return checked
    return wrap


def attach(decl: Declarations, metrics: Metrics, pipeline: Pipeline | None = None,
           ready: Callable[[], bool] = lambda: True) -> None:
    """``ready`` adds a condition of the pipeline (the catalogue is loaded)."""
    app = decl.app
    token = guarded(decl.settings.api_token.get_secret_value())
    user_key = decl.user_key   # a user's table key: the id, or its pseudonym

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # ?name[]=...: only those samples, as Prometheus's own exporters answer it (a
        # poller that wants one counter should not make the worker render them all)
        names = request.query.getall("name[]", [])
        registry = metrics.registry.restricted_registry(names) if names else metrics.registry
        return web.bytes(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        return _answer(web, api.Health(status="ok"))

    @app.page("/ready")
    async def ready_view(web: Any, request: Any) -> Any:
        ok = is_ready(app) and ready()
        return _answer(web, api.Readiness(ready=ok), status=200 if ok else 503)

    document = msgspec.json.encode(api.openapi())

    @app.page("/openapi.json")
    async def openapi_view(web: Any, request: Any) -> Any:
        return web.bytes(document, content_type="application/json")

    if pipeline is None:
        return

    @app.page("/users/{user_id}/recommendations")
    @token
    @app.table_route(table=decl.user_state, match_info="user_id")
    async def recommendations_view(web: Any, request: Any, user_id: str) -> Any:
        query = api.parse_query(request.query)
        if isinstance(query, str):
            return _answer(web, api.ApiError(error=query, code="bad_parameter"), status=400)
        with metrics.pull_seconds.time():
            key = user_key(user_id.encode())
            raw = decl.user_state.get(key)
            state = _codec.decode(raw)
            items, version = pipeline.recommend_now(state, query.request(), key,
                                                    fresh=query.fresh, at=query.at)
            body = api.encode(api.Recommendations(
                user_id=user_id, known_user=raw is not None and not is_marker(state),
                variant=pipeline.feedback.variant(user_id), model_version=version,
                items=items))
        return web.bytes(body, content_type="application/json")

    @app.page("/users/{user_id}")
    @token
    @app.table_route(table=decl.user_state, match_info="user_id")
    async def user_view(web: Any, request: Any, user_id: str) -> Any:
        key = user_key(user_id.encode())
        raw = decl.user_state.get(key)
        state = _codec.decode(raw)
        if raw is not None and is_marker(state):   # forgotten, nothing new since
            raw = None
        held = {"profile": decl.profile_state.get(key) is not None,
                "feedback_state": any(decl.feedback_state.get(k) is not None
                                      for k in decl.user_keys(decl.feedback_state, key))}
        if raw is None and not any(held.values()):
            return _answer(web, api.ApiError(error="unknown user", code="unknown_user"),
                           status=404)
        return _answer(web, api.UserView(
            **held,
            user_id=user_id,
            counts=state.counts,
            first_ts=state.first_ts,
            last_ts=state.last_ts,
            recent=[api.RecentEvent(item_id=i, type=k, ts=t) for i, k, t in state.recent],
            purchased=len(purchases(state)),
            consumed=consumed_size(state.consumed),
            sequence_events=len(state.sequence) // STORED.itemsize,
            interest_weight=state.interest_weight,
            last_search=state.query or None,
            state_bytes=len(raw or b""),
        ))

    @app.page("/model")
    @token
    async def model_view(web: Any, request: Any) -> Any:
        loop = pipeline.feedback
        registry = loop.registry

        def described(version: ModelVersion) -> api.RankerVersion:
            return api.RankerVersion(
                version=version.version, generation=version.generation,
                weights=dict(zip(FEATURES, version.weights, strict=False)),
                examples_seen=version.seen, origin=version.origin, note=version.note,
                published_at=version.published_at, projection=version.projection or None)

        return _answer(web, api.ModelView(
            experiment=loop.experiment.name,
            variants={variant: api.VariantServed(
                share=share, version=loop.params_for(variant).version,
                projection=loop.projection_for(variant))
                for variant, share in loop.experiment.shares.items()},
            head=described(registry.head) if registry.head else None,
            checkpoints=[described(v) for _, v in sorted(registry.checkpoints.items())],
            behaviour_model=_behaviour_model(pipeline),
        ))

    @app.page("/items/{item_id}")
    @token
    async def item_view(web: Any, request: Any, item_id: str) -> Any:
        catalogue = pipeline.recommender.catalogue
        info = catalogue.items.get(item_id)
        vector = catalogue.index.vector(item_id)
        if info is None or vector is None:
            return _answer(web, api.ApiError(error="unknown item", code="unknown_item"),
                           status=404)
        similar = catalogue.index.search(vector, 6, exclude={item_id})
        return _answer(web, api.ItemView(
            item_id=item_id,
            title=info.title,
            category=info.category,
            in_stock=info.in_stock,
            similar=[api.Neighbour(item_id=i, cosine=round(s, 4)) for i, s in similar[:5]],
            covisited=[api.Covisited(item_id=i, strength=round(s, 4))
                       for i, s in pipeline.recommender.covisit.neighbours(item_id, 5)],
        ))


def _answer(web: Any, answer: api.Answer, status: int = 200,
            headers: dict[str, str] | None = None) -> Any:
    return web.bytes(api.encode(answer), content_type="application/json", status=status,
                     headers=headers)


def _behaviour_model(pipeline: Pipeline) -> api.BehaviourModel | None:
    """The served behaviour model: its version, what it was trained and measured on, and how
    many catalogue items it scores (from its text alone: items it never saw), its scale."""
    model = pipeline.sequence_model
    if model is None:
        return None
    space = model.space
    return api.BehaviourModel(
        version=model.version, config=model.manifest.get("config"),
        result=model.manifest.get("result"), vocabulary=len(space.vocabulary),
        catalogue_items_scored=len(space.ids), scored_from_text=space.from_text,
        scale=space.scale, scale_evidence=pipeline.scale_evidence())
