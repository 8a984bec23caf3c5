"""docs/asyncapi.yaml and docs/schemas/ are the contract the models implement, checked with jsonschema."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from notifiers.contract import asyncapi_document, render_asyncapi, render_schema, schema_id
from notifiers.contract_text import REJECT_CODES, reject_code_table
from notifiers.errors import MalformedReply
from notifiers.messages import (
    NOTICE_MODELS,
    NOTICE_TYPES,
    REPLY_MODELS,
    REPLY_TYPES,
    parse_notice,
    parse_reply,
)
from notifiers.wire import WireRejectCode
from tests.unit.published_schemas import (
    DOCS,
    asyncapi,
    errors,
    file_validator,
    payload_validator,
    published_schema,
)

REGENERATE = "regenerate with `python -m notifiers.contract docs`"
README = Path(__file__).resolve().parents[2] / "README.md"
MODELS = {m.__name__: m for m in (*NOTICE_MODELS, *REPLY_MODELS)}
MODEL_OF = {str(m.model_fields["type"].default): m.__name__ for m in MODELS.values()}
EXAMPLES = [
    (kind, example["name"], example["payload"])
    for kind, message in asyncapi()["components"]["messages"].items()
    for example in message["examples"]
]


def test_committed_documents_are_what_the_models_generate() -> None:
    assert (DOCS / "asyncapi.yaml").read_text(encoding="utf-8") == render_asyncapi(), REGENERATE
    on_disk = {path.stem for path in (DOCS / "schemas").glob("*.json")}
    assert on_disk == set(MODELS), REGENERATE
    for name in MODELS:
        assert (DOCS / "schemas" / f"{name}.json").read_text(encoding="utf-8") == render_schema(name), (
            REGENERATE
        )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_schema_names_its_draft_and_a_stable_id(name: str) -> None:
    exported = published_schema(name)
    assert exported["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert exported["$id"] == schema_id(name) == f"https://evacuator.dev/schemas/1/{name}.json"
    jsonschema.Draft202012Validator.check_schema(exported)
    assert {key: value for key, value in exported.items() if key[0] != "$"} == {
        key: value for key, value in MODELS[name].model_json_schema().items() if key[0] != "$"
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_component_is_the_published_schema_with_its_references_rebased(name: str) -> None:
    inline = json.dumps(asyncapi()["components"]["schemas"][name])
    component = json.loads(inline.replace(f'"#/components/schemas/{name}/$defs/', '"#/$defs/'))
    assert "$id" not in component  # an $id would make `#/components/...` resolve against it
    assert {"$schema": published_schema(name)["$schema"], "$id": schema_id(name), **component} == (
        published_schema(name)
    )


def test_every_message_type_is_documented_with_an_operation() -> None:
    document = asyncapi()
    messages = document["components"]["messages"]
    assert set(messages) == {*NOTICE_TYPES, *REPLY_TYPES}
    received = {ref["$ref"].rsplit("/", 1)[1] for ref in document["operations"]["receiveNotices"]["messages"]}
    sent = {ref["$ref"].rsplit("/", 1)[1] for ref in document["operations"]["sendReply"]["messages"]}
    assert (received, sent) == (set(NOTICE_TYPES), set(REPLY_TYPES))
    assert asyncapi_document() == document and document["asyncapi"] == "3.0.0"


@pytest.mark.parametrize(("kind", "name", "example"), EXAMPLES, ids=[e[1] for e in EXAMPLES])
def test_each_example_validates_against_its_payload_and_its_schema_file(
    kind: str, name: str, example: dict[str, Any]
) -> None:
    assert errors(payload_validator(kind), example) == []
    assert errors(file_validator(MODEL_OF[kind]), example) == []
    body = json.dumps(example).encode()
    parsed = parse_notice(body) if kind in NOTICE_TYPES else parse_reply(body)
    assert parsed.model_dump(mode="json") == example
    newer = {**example, "added_later": 1}
    if kind in NOTICE_TYPES:  # a newer service's field: ignored by this reader, allowed by the schemas
        assert errors(payload_validator(kind), newer) == []
        assert errors(file_validator(MODEL_OF[kind]), newer) == []
        assert parse_notice(json.dumps(newer).encode()).model_dump(mode="json") == example
    else:  # the service refuses what it does not know from a tenant
        assert errors(payload_validator(kind), newer) and errors(file_validator(MODEL_OF[kind]), newer)
        with pytest.raises(MalformedReply, match="added_later"):
            parse_reply(json.dumps(newer).encode())


def test_every_example_notice_has_its_own_event_id() -> None:
    event_ids = [example["event_id"] for kind, _, example in EXAMPLES if kind in NOTICE_TYPES]
    assert len(event_ids) == len(set(event_ids)) > len(NOTICE_TYPES)  # evacuation_updated has two
    replies = [example for kind, _, example in EXAMPLES if kind in ("ready", "postpone")]
    scheduled = next(example for kind, _, example in EXAMPLES if kind == "evacuation_scheduled")
    assert {reply["event_id"] for reply in replies} == {scheduled["event_id"]}


def test_the_examples_show_an_update_for_a_postpone_and_for_a_ready_with_the_same_latest_deadline() -> None:
    scheduled = next(example for kind, _, example in EXAMPLES if kind == "evacuation_scheduled")
    updates = {example["cause"]: example for kind, _, example in EXAMPLES if kind == "evacuation_updated"}
    assert set(updates) == {"postponed", "expedited", "held_back"}
    assert updates["held_back"]["hold"] == "too_many_evacuating" and updates["postponed"]["hold"] is None
    latest = scheduled["vms"][0]["latest_deadline"]
    assert latest is not None
    assert all(update["vms"][0]["latest_deadline"] == latest for update in updates.values())


@pytest.mark.parametrize("name", [m.__name__ for m in NOTICE_MODELS])
def test_a_notice_schema_requires_every_field_the_service_always_writes(name: str) -> None:
    schema = published_schema(name)
    for part in (schema, *schema.get("$defs", {}).values()):
        if part.get("type") == "object":
            assert set(part["required"]) == set(part["properties"]), part["title"]
    assert set(ENVELOPE) <= set(schema["required"])


ENVELOPE = ("event_id", "type", "schema_version", "incarnation")


@pytest.mark.parametrize(("name", "field"), [(m.__name__, f) for m in NOTICE_MODELS for f in ENVELOPE])
def test_a_notice_without_an_envelope_field_is_refused_by_its_schema(name: str, field: str) -> None:
    kind = next(kind for kind, model in MODEL_OF.items() if model == name)
    example = next(example for k, _, example in EXAMPLES if k == kind)
    assert errors(file_validator(name), example) == []
    assert f"'{field}' is a required property" in str(errors(file_validator(name), _without(example, field)))


@pytest.mark.parametrize("kind", REPLY_TYPES)
def test_a_reply_schema_requires_exactly_what_the_service_requires(kind: str) -> None:
    example = next(example for k, _, example in EXAMPLES if k == kind)
    required = set(published_schema(MODEL_OF[kind])["required"])
    assert {"schema_version", "type", "vm_uuid"} <= required
    for field in example:
        refused_by_service = _refused(_without(example, field))
        refused_by_schema = bool(errors(file_validator(MODEL_OF[kind]), _without(example, field)))
        assert refused_by_service == refused_by_schema == (field in required), field


def test_schemas_refuse_what_the_models_refuse() -> None:
    postpone = next(example for kind, _, example in EXAMPLES if kind == "postpone")
    for bad in (
        {**postpone, "postpone_seconds": "600"},
        {**postpone, "postpone_seconds": 0},
        {**postpone, "schema_version": 2},
        {**postpone, "vm_uuid": "web-1"},
    ):
        assert _refused(bad)
        assert errors(file_validator("PostponeReply"), bad)


def test_the_format_checker_refuses_a_time_without_its_zone() -> None:
    scheduled = next(example for kind, _, example in EXAMPLES if kind == "evacuation_scheduled")
    naive = {**scheduled, "vms": [{**scheduled["vms"][0], "deadline": "2026-11-25T04:10:00"}]}
    assert "is not a 'date-time'" in str(errors(file_validator("EvacuationScheduled"), naive))


def test_reply_rejected_code_is_the_closed_list_of_wire_codes() -> None:
    schema = published_schema("ReplyRejected")
    assert schema["properties"]["code"] == {"$ref": "#/$defs/WireRejectCode"}
    assert schema["$defs"]["WireRejectCode"]["enum"] == [code.value for code in WireRejectCode]
    rejected = next(example for kind, _, example in EXAMPLES if kind == "reply_rejected")
    assert errors(file_validator("ReplyRejected"), {**rejected, "code": "not_owner"})  # never sent


def test_every_code_is_explained_in_the_asyncapi_document_and_the_readme() -> None:
    assert list(REJECT_CODES) == list(WireRejectCode)
    assert reject_code_table() in asyncapi()["components"]["messages"]["reply_rejected"]["description"]
    assert reject_code_table() in README.read_text(encoding="utf-8"), "README: copy reject_code_table()"


def _field_text(name: str, field: str) -> str:
    schema = published_schema(name)
    part = schema["$defs"]["ScheduledVm"] if field in ("latest_deadline", "not_before") else schema
    return str(part["properties"][field].get("description", ""))


DOCUMENTED: list[tuple[str, Callable[[], str], list[str]]] = [
    ("latest_deadline", lambda: _field_text("EvacuationUpdated", "latest_deadline"),
     ["never moves", "null", "repeats"]),
    ("not_before", lambda: _field_text("EvacuationScheduled", "not_before"), ["null"]),
    ("in_reply_to", lambda: _field_text("ReplyRejected", "in_reply_to"), ["message_id"]),
    ("postpone_seconds", lambda: _field_text("PostponeReply", "postpone_seconds"),
     ["current deadline", "latest_deadline"]),
    ("from_host", lambda: _field_text("VmEvacuated", "from_host"), ["same value as `host`"]),
    ("downtime_seconds", lambda: _field_text("VmEvacuated", "downtime_seconds"),
     ["guest off", "running on `to_host`", "null", "off before the move", "live", "older than this field"]),
    ("bytes_moved", lambda: _field_text("VmEvacuated", "bytes_moved"),
     ["allocated", "last attempt", "null", "live", "older than this field"]),
    ("cause", lambda: _field_text("EvacuationUpdated", "cause"), ["expedited: a ready was accepted"]),
    *[(f"incarnation_{m.__name__}", lambda m=m: _field_text(m.__name__, "incarnation"),
       ["same `host`", "lower"]) for m in NOTICE_MODELS],
    ("info", lambda: asyncapi()["info"]["description"], [
        "quorum queue", "`passive`", "403", "channel of their own", "closes that channel", "`mandatory`",
        "basic.return", "`message_id`", "`in_reply_to`", "`<tenant>.all`", "`*.all`", "`expedited`",
        "added to the VM's current deadline", "never moves",
    ]),
    ("replies_channel", lambda: asyncapi()["channels"]["replies"]["description"],
     ["`<tenant>.all`", "`mandatory`"]),
    ("notices_channel", lambda: asyncapi()["channels"]["tenantNotices"]["description"],
     ["quorum", "403", "passive"]),
    ("evacuation_updated", lambda: asyncapi()["components"]["messages"]["evacuation_updated"]["description"],
     ["`expedited`"]),
]  # fmt: skip


@pytest.mark.parametrize(("where", "phrases"), [d[1:] for d in DOCUMENTED], ids=[d[0] for d in DOCUMENTED])
def test_the_contract_tells_a_client_what_it_must_know(where: Callable[[], str], phrases: list[str]) -> None:
    described = " ".join(where().split())  # Markdown: a line break inside a paragraph reads as a space
    assert [phrase for phrase in phrases if phrase not in described] == []


def _without(example: dict[str, Any], field: str) -> dict[str, Any]:
    return {key: value for key, value in example.items() if key != field}


def _refused(reply: dict[str, Any]) -> bool:
    try:
        parse_reply(json.dumps(reply).encode())
    except MalformedReply:
        return True
    return False
