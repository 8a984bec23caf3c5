"""docs/asyncapi.yaml and docs/schemas/ are the contract the models implement, checked with jsonschema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from notifiers.contract import asyncapi_document, render_asyncapi, render_schema, schemas
from notifiers.messages import (
    NOTICE_MODELS,
    NOTICE_TYPES,
    REPLY_MODELS,
    REPLY_TYPES,
    parse_notice,
    parse_reply,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
REGENERATE = "regenerate with `python -m notifiers.contract docs`"
DOCUMENT: dict[str, Any] = yaml.safe_load((DOCS / "asyncapi.yaml").read_text(encoding="utf-8"))
MODELS = {m.__name__: m for m in (*NOTICE_MODELS, *REPLY_MODELS)}


def test_committed_documents_are_what_the_models_generate() -> None:
    assert (DOCS / "asyncapi.yaml").read_text(encoding="utf-8") == render_asyncapi(), REGENERATE
    on_disk = {path.stem for path in (DOCS / "schemas").glob("*.json")}
    assert on_disk == set(MODELS), REGENERATE
    for name in MODELS:
        assert (DOCS / "schemas" / f"{name}.json").read_text(encoding="utf-8") == render_schema(name), (
            REGENERATE
        )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_schema_is_the_models_export_and_valid_json_schema(name: str) -> None:
    exported = json.loads((DOCS / "schemas" / f"{name}.json").read_text(encoding="utf-8"))
    assert exported == MODELS[name].model_json_schema()
    jsonschema.Draft202012Validator.check_schema(exported)
    inline = json.dumps(DOCUMENT["components"]["schemas"][name])
    assert json.loads(inline.replace(f'"#/components/schemas/{name}/$defs/', '"#/$defs/')) == exported


def test_every_message_type_is_documented_with_an_operation() -> None:
    messages = DOCUMENT["components"]["messages"]
    assert set(messages) == {*NOTICE_TYPES, *REPLY_TYPES}
    received = {ref["$ref"].rsplit("/", 1)[1] for ref in DOCUMENT["operations"]["receiveNotices"]["messages"]}
    sent = {ref["$ref"].rsplit("/", 1)[1] for ref in DOCUMENT["operations"]["sendReply"]["messages"]}
    assert (received, sent) == (set(NOTICE_TYPES), set(REPLY_TYPES))
    assert asyncapi_document() == DOCUMENT and DOCUMENT["asyncapi"] == "3.0.0"


@pytest.mark.parametrize("kind", [*NOTICE_TYPES, *REPLY_TYPES])
def test_each_example_validates_against_its_schema_and_parses(kind: str) -> None:
    message = DOCUMENT["components"]["messages"][kind]
    name = message["payload"]["$ref"].rsplit("/", 1)[1]
    schema = schemas()[name]
    example = message["examples"][0]["payload"]
    jsonschema.validate(example, schema)
    body = json.dumps(example).encode()
    parsed = parse_notice(body) if kind in NOTICE_TYPES else parse_reply(body)
    assert parsed.model_dump(mode="json") == example
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**example, "unexpected": 1}, schema)  # the schemas are as strict as the models


def test_schemas_refuse_what_the_models_refuse() -> None:
    postpone = DOCUMENT["components"]["messages"]["postpone"]["examples"][0]["payload"]
    for bad in (
        {**postpone, "postpone_seconds": "600"},
        {**postpone, "postpone_seconds": 0},
        {**postpone, "schema_version": 2},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schemas()["PostponeReply"])
