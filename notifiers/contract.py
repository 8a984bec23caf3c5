"""The tenant contract as documents: the AsyncAPI description and JSON Schemas, generated from the models.

Regenerate after changing a wire model: `python -m notifiers.contract docs` (a test fails until you do).
"""

from __future__ import annotations

import json
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from notifiers import contract_text as text
from notifiers import messages as wire
from notifiers.wire import WireModel, WireRejectCode

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE = "https://evacuator.dev/schemas"
_AMQP = "0.3.0"  # the AsyncAPI AMQP bindings' version

_T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
_VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
_SCHEDULED = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
# Every example notice has its own event id, as every notice sent has: a client drops repeated ones.
_EVENT_IDS = (
    "9e4c1d2b-3a5f-4e6d-8c7b-1a2b3c4d5e6f", "1f3e5d7c-9b2a-4c6e-8d0f-2a4c6e8f0b1d",
    "7a9c1e3f-5b7d-4f1a-9c3e-5f7b9d1a3c5e", "3b5d7f9a-1c3e-4a5c-a7e9-1b3d5f7a9c2e",
    "5c7e9a1b-3d5f-4b7d-b9f1-3c5e7a9b1d4f", "8d0f2b4c-6e8a-4c0e-82a4-6d8f0b2c4e7a",
    "2e4a6c8d-0f2b-4d6f-a8c0-2e4a6c8d0f9b", "4f6b8d0e-2a4c-4e8a-9b2d-4f6b8d0e2a1c",
    "6a8c0e2f-4b6d-4f0b-8c2e-6a8c0e2f4b3d", "0b1d3f5a-7c9e-4b1d-8f3a-5c7e9b1d3f6a",
)  # fmt: skip
_REPLY_MESSAGE_ID = "c2d4e6f8-0a1b-4c3d-9e5f-7a8b9c0d1e2f"
_SEQ = int(_T0.timestamp() * 1000)  # the outbox numbers notices from its creation time in milliseconds


def examples() -> dict[str, tuple[WireModel, ...]]:
    """Valid examples of every message type, keyed by `type`: one VM's story, each notice with its own id."""
    event_ids = iter(_EVENT_IDS)

    def sent(minutes: int) -> dict[str, Any]:
        return {"tenant": "acme", "host": "hv-01", "event_id": next(event_ids),
                "scheduled_event_id": _SCHEDULED, "at": _T0 + timedelta(minutes=minutes)}  # fmt: skip

    def vm(deadline_minutes: int) -> wire.ScheduledVm:
        deadline = _T0 + timedelta(minutes=deadline_minutes)
        return wire.ScheduledVm(vm_uuid=_VM, vm_name="web-1", deadline=deadline,
                                latest_deadline=_T0 + timedelta(minutes=40))  # fmt: skip

    hot = wire.Reason(source="hwmon", sensor="coretemp/Package id 0", value=97.0, threshold=85.0,
                      unit="celsius", message="Package id 0 at 97 °C, threshold 85 °C")  # fmt: skip
    samples: list[WireModel] = [
        # A host whose policy for severe is notify: nothing moves; the tenant may act on its own.
        wire.HostAtRisk(event_id=next(event_ids), tenant="acme", host="hv-01", severity="severe",
                        reasons=(hot,), vms=(wire.AtRiskVm(vm_uuid=_VM, vm_name="web-1"),),
                        at=_T0 - timedelta(minutes=30)),
        wire.EvacuationScheduled(
            event_id=_SCHEDULED, host="hv-01", tenant="acme", severity="severe",
            reasons=(hot,),
            vms=(vm(10),), allowed_replies=("ready", "postpone", "register"),
            reply_exchange="evacuator.replies", reply_routing_key="acme.hv-01",
        ),
        # A postpone of 600 s sent at 04:02 is added to the deadline (04:10), not to the time of the reply.
        wire.EvacuationUpdated(cause="postponed", vms=(vm(20),), **sent(2)),
        wire.EvacuationUpdated(cause="expedited", vms=(vm(5),), **sent(5)),
        wire.EvacuationUpdated(cause="held_back", hold="too_many_evacuating", vms=(vm(5),), **sent(6)),
        wire.EvacuationStarted(vm_uuid=_VM, vm_name="web-1", **sent(5)),
        # Off 38.4 s (shutdown finished to running on hv-02); its 20 GiB disk had 3.1 GiB allocated.
        wire.VmEvacuated(vm_uuid=_VM, vm_name="web-1", from_host="hv-01", to_host="hv-02",
                         downtime_seconds=38.4, bytes_moved=3_328_599_654, **sent(7)),
        wire.EvacuationCompleted(moved_vm_uuids=(_VM,), **sent(7)),
        wire.EvacuationCancelled(vm_uuids=(_VM,), reason="hv-01 is healthy again", **sent(3)),
        wire.EvacuationFailed(vm_uuid=_VM, vm_name="web-1",
                              reason="copy of web-1.raw failed: no space left on hv-02", **sent(6)),
        wire.ReplyRejected(event_id=next(event_ids), tenant="acme", host="hv-01",
                           code=WireRejectCode.POSTPONE_LIMIT_REACHED,
                           reason="no postpone past 2026-11-25T04:40:00+00:00", in_reply_to=_REPLY_MESSAGE_ID,
                           vm_uuid=_VM, at=_T0 + timedelta(minutes=4)),
        wire.ReadyReply(vm_uuid=_VM, event_id=_SCHEDULED),
        wire.PostponeReply(vm_uuid=_VM, postpone_seconds=600, event_id=_SCHEDULED),
        wire.RegisterReply(vm_uuid=_VM, window_seconds=900),
    ]  # fmt: skip
    by_type: dict[str, tuple[WireModel, ...]] = {}
    for index, sample in enumerate(samples, start=1):
        if isinstance(sample, wire.NOTICE_MODELS):  # numbered as one host's outbox numbers them
            sample = sample.model_copy(update={"incarnation": _SEQ + index})
        kind = str(getattr(sample, "type"))  # noqa: B009  # every model has it
        by_type[kind] = (*by_type.get(kind, ()), sample)
    return by_type


def schema_id(name: str) -> str:
    """The `$id` of a model's published schema: a stable URL naming the schema version and the file."""
    return f"{SCHEMA_BASE}/{wire.SCHEMA_VERSION}/{name}.json"


def schemas() -> dict[str, dict[str, Any]]:
    """model name -> its published JSON Schema (draft 2020-12): the model's export with `$schema` and `$id`.

    Notices are exported as the service writes them (every field required), replies as it reads them.
    """
    return {
        model.__name__: {
            "$schema": SCHEMA_DIALECT,
            "$id": schema_id(model.__name__),
            **model.model_json_schema(),
        }
        for model in (*wire.NOTICE_MODELS, *wire.REPLY_MODELS)
    }


def _inline(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as an AsyncAPI component: without `$schema` and `$id` (an `$id` would rebase references),
    its local `#/$defs/` references rebased under components.schemas.<name>."""
    body = {key: value for key, value in schema.items() if key not in ("$schema", "$id")}
    text_ = json.dumps(body).replace('"#/$defs/', f'"#/components/schemas/{name}/$defs/')
    rebased: dict[str, Any] = json.loads(text_)
    return rebased


def _message(kind: str, model_name: str, samples: tuple[WireModel, ...]) -> dict[str, Any]:
    summary = {**text.NOTICE_TEXT, **text.REPLY_TEXT}[kind]
    message: dict[str, Any] = {"name": kind, "title": kind.replace("_", " "), "summary": summary}
    if kind in text.MESSAGE_TEXT:
        message["description"] = text.MESSAGE_TEXT[kind]
    if kind in wire.REPLY_TYPES:
        message["correlationId"] = {"location": "$message.header#/message_id", "description": text.MESSAGE_ID}
    elif kind == "reply_rejected":
        message["correlationId"] = {"location": "$message.payload#/in_reply_to",
                                    "description": text.IN_REPLY_TO}  # fmt: skip
    return {
        **message, "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{model_name}"},
        "bindings": {"amqp": {"messageType": kind, "deliveryMode": 2, "bindingVersion": _AMQP}},
        "examples": [{"name": _example_name(sample), "payload": sample.model_dump(mode="json")}
                     for sample in samples],
    }  # fmt: skip


def _example_name(sample: WireModel) -> str:
    if isinstance(sample, wire.EvacuationUpdated):
        return f"{sample.type}_{sample.cause}"
    return str(getattr(sample, "type"))  # noqa: B009  # every model has it


def _wrapped(paragraph: str) -> str:
    """A Markdown paragraph in lines that fit the document (a single newline reads as a space)."""
    return textwrap.fill(paragraph, width=104, break_long_words=False, break_on_hyphens=False)


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the whole contract."""
    samples = examples()
    model_of = {
        str(m.model_fields["type"].default): m.__name__ for m in (*wire.NOTICE_MODELS, *wire.REPLY_MODELS)
    }
    kinds = (*wire.NOTICE_TYPES, *wire.REPLY_TYPES)
    messages = {kind: _message(kind, model_of[kind], samples[kind]) for kind in kinds}
    notice_refs = {kind: {"$ref": f"#/components/messages/{kind}"} for kind in wire.NOTICE_TYPES}
    reply_refs = {kind: {"$ref": f"#/components/messages/{kind}"} for kind in wire.REPLY_TYPES}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "evacuator tenant contract", "version": str(wire.SCHEMA_VERSION),
                 "description": "\n\n".join(map(_wrapped, text.DESCRIPTION))},
        "defaultContentType": "application/json",
        "servers": {"broker": {"host": "mq.example.net:5671", "protocol": "amqps",
                               "description": "RabbitMQ over TLS, the broker's certificate verified"}},
        "channels": {
            "tenantNotices": {
                "address": "{tenant}.notices",
                "description": text.NOTICES_CHANNEL,
                "parameters": {"tenant": {"description": "The tenant's name, which is its broker user."}},
                "messages": notice_refs,
                "bindings": {"amqp": {"is": "queue", "queue": {"name": "{tenant}.notices", "durable": True,
                             "exclusive": False, "autoDelete": False}, "bindingVersion": _AMQP}},
            },
            "replies": {
                "address": "evacuator.replies",
                "description": text.REPLIES_CHANNEL,
                "messages": reply_refs,
                "bindings": {"amqp": {"is": "routingKey", "bindingVersion": _AMQP, "exchange": {
                    "name": "evacuator.replies", "type": "topic", "durable": True, "autoDelete": False}}},
            },
        },
        "operations": {
            "receiveNotices": {
                "action": "receive", "channel": {"$ref": "#/channels/tenantNotices"},
                "summary": "Consume, handle, then ack; drop a notice whose event_id was already handled.",
                "bindings": {"amqp": {"ack": True, "bindingVersion": _AMQP}},
                "messages": [{"$ref": f"#/channels/tenantNotices/messages/{k}"} for k in wire.NOTICE_TYPES],
            },
            "sendReply": {
                "action": "send", "channel": {"$ref": "#/channels/replies"},
                "summary": text.SEND_REPLY,
                "bindings": {"amqp": {"userId": "{tenant}", "deliveryMode": 2, "mandatory": True,
                                      "bindingVersion": _AMQP}},
                "messages": [{"$ref": f"#/channels/replies/messages/{k}"} for k in wire.REPLY_TYPES],
            },
        },
        "components": {
            "messages": messages,
            "schemas": {name: _inline(name, schema) for name, schema in schemas().items()},
        },
    }  # fmt: skip


class _Dumper(yaml.SafeDumper):
    """Writes text of several lines (the descriptions, the codes' table) as literal blocks, as it reads."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def render_asyncapi() -> str:
    return "# Generated by `python -m notifiers.contract docs` from notifiers/messages.py: do not edit.\n" + (
        yaml.dump(asyncapi_document(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    )


def render_schema(name: str) -> str:
    return json.dumps(schemas()[name], indent=2, ensure_ascii=False) + "\n"


def write_documents(docs_dir: Path) -> list[Path]:
    """Write docs_dir/asyncapi.yaml and docs_dir/schemas/<Model>.json; returns the paths written."""
    (docs_dir / "schemas").mkdir(parents=True, exist_ok=True)
    written = [docs_dir / "asyncapi.yaml"]
    written[0].write_text(render_asyncapi(), encoding="utf-8")
    for name in schemas():
        path = docs_dir / "schemas" / f"{name}.json"
        path.write_text(render_schema(name), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_documents(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(written_path)
