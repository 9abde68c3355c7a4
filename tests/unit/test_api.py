"""The HTTP API's typed query and answers, and its OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from multidict import MultiDict
from openapi_spec_validator import validate

from app.worker import api

DOCUMENT = Path(__file__).parents[2] / "docs" / "openapi.json"


def test_the_document_is_valid_openapi_and_committed_as_generated() -> None:
    document = api.openapi()
    validate(document)
    assert json.loads(DOCUMENT.read_text()) == json.loads(json.dumps(document)), (
        "docs/openapi.json is stale: run `streamrec schemas`")


def test_every_answer_model_and_query_parameter_is_in_the_document() -> None:
    document = api.openapi()
    schemas = document["components"]["schemas"]
    for route in api.ROUTES:
        operation = document["paths"][route.path]["get"]
        for status, model in route.answers.items():
            content = operation["responses"][str(status)]["content"]
            if model is not None:
                assert content["application/json"]["schema"]["$ref"].endswith(model.__name__)
                assert model.__name__ in schemas
    names = {p["name"] for p in document["paths"]["/users/{user_id}/recommendations"]["get"]
             ["parameters"] if p["in"] == "query"}
    assert names == {f.name for f in msgspec.structs.fields(api.RecommendationsQuery)}
    assert "security" not in document["paths"]["/ready"]["get"]
    assert {"bearer": []} in document["paths"]["/model"]["get"]["security"]


def test_the_query_defaults_and_its_request() -> None:
    query = api.parse_query({})
    assert query == api.RecommendationsQuery()
    assert isinstance(query, api.RecommendationsQuery)
    request = query.request()
    assert (request.k, request.exclude_seen, request.allow_categories) == (10, True, None)
    parsed = api.parse_query({"k": "5", "exclude": "a, b,", "category": "kids",
                              "not_category": "horror,sci-fi", "include_seen": "yes"})
    assert isinstance(parsed, api.RecommendationsQuery)
    request = parsed.request()
    assert request.k == 5
    assert request.exclude == {"a", "b"}
    assert request.allow_categories == {"kids"}
    assert request.deny_categories == {"horror", "sci-fi"}
    assert request.exclude_seen is False


@pytest.mark.parametrize(("value", "expected"), [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True),
    ("0", False), ("false", False), ("no", False), ("off", False), ("", False)])
def test_booleans_read_as_documented(value: str, expected: bool) -> None:
    query = api.parse_query({"fresh": value})
    assert isinstance(query, api.RecommendationsQuery)
    assert query.fresh is expected


@pytest.mark.parametrize(("query", "reason"), [
    ({"k": "0"}, "k: expected `int` >= 1"),
    ({"k": "101"}, "k: expected `int` <= 100"),
    ({"k": "ten"}, "k: expected `int`, got `str`"),
    ({"fresh": "maybe"}, "fresh: expected `bool`, got `str`"),
    ({"categroy": "kids"}, "unknown query parameter `categroy`"),
])
def test_a_refused_query_says_which_parameter_and_why(query: dict[str, str],
                                                      reason: str) -> None:
    assert api.parse_query(query) == reason


def test_a_repeated_parameter_counts_its_first_value() -> None:
    query = api.parse_query(MultiDict([("k", "3"), ("k", "500")]))
    assert isinstance(query, api.RecommendationsQuery)
    assert query.k == 3


def test_an_answer_with_a_field_its_model_lacks_does_not_decode() -> None:
    body = api.encode(api.ApiError(error="unknown user", code="unknown_user"))
    assert msgspec.json.decode(body, type=api.ApiError).code == "unknown_user"
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"error": "x", "code": "unknown_user", "extra": 1}',
                            type=api.ApiError)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"error": "x", "code": "teapot"}', type=api.ApiError)


def test_a_list_can_be_asked_for_a_given_event_time() -> None:
    from app.worker.api import RecommendationsQuery, parse_query

    assert parse_query({"at": "975000000000"}) == RecommendationsQuery(at=975_000_000_000)
    assert parse_query({}) == RecommendationsQuery(at=None)
    assert parse_query({"at": "-5"}) == "at: expected `int` >= 0"
