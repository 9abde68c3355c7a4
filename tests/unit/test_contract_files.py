"""The published JSON Schema files match the code, and mean what the validator means."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import msgspec
import pytest

from app.contract.records import SCHEMA_TYPES, SCHEMA_VERSION, json_schema
from app.contract.samples import bad_event_samples, good_view

SCHEMAS = Path(__file__).parents[2] / "app" / "contract" / "schemas"


@pytest.mark.parametrize("name", list(SCHEMA_TYPES))
def test_schema_file_is_generated_from_the_code(name: str) -> None:
    path = SCHEMAS / f"{name}.v{SCHEMA_VERSION}.json"
    committed = json.loads(path.read_text())
    assert committed == json.loads(json.dumps(json_schema(name))), (
        f"{path.name} is stale: run `streamrec schemas`"
    )


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.v{SCHEMA_VERSION}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_accepts_a_good_event() -> None:
    body = msgspec.json.decode(good_view("u", "e", "i", 1_700_000_000_000))
    _validator("events").validate(body)


@pytest.mark.parametrize("sample", [
    s for s in bad_event_samples("u", "e", 4096)
    if s.reason.value in {"wrong_type", "missing_field", "invalid_value", "unknown_type",
                          "unknown_version"}
], ids=lambda s: s.reason)
def test_schema_rejects_what_the_validator_rejects(sample) -> None:
    body = msgspec.json.decode(sample.value)
    assert list(_validator("events").iter_errors(body))


def test_every_code_block_of_the_clients_page_is_taken_from_its_example() -> None:
    """docs/clients.md quotes examples/ (run by tests/integration/test_clients.py): each of
    its code blocks must appear, as written, in one of the example files."""
    root = Path(__file__).parents[2]
    page = (root / "docs" / "clients.md").read_text()
    examples = [p.read_text() for p in (root / "examples").iterdir() if p.is_file()]
    blocks = re.findall(r"```(?:python|sh)\n(.*?)```", page, flags=re.DOTALL)
    assert len(blocks) >= 4
    for block in blocks:
        assert any(block.rstrip("\n") in text for text in examples), block
