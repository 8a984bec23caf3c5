"""The tenant contract as documents: the AsyncAPI description and JSON Schemas, generated from the models.

Regenerate after changing a wire model: `python -m notifiers.contract docs` (a test fails until you do).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from notifiers import messages as wire
from notifiers.wire import WireModel

_T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
_VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
_EVENT = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
_LATER = "9e4c1d2b-3a5f-4e6d-8c7b-1a2b3c4d5e6f"
_SEQ = int(_T0.timestamp() * 1000)  # the outbox numbers notices from its creation time in milliseconds
_COMMON: dict[str, Any] = {"tenant": "acme", "at": _T0, "scheduled_event_id": _EVENT}


def examples() -> dict[str, WireModel]:
    """One valid example per message type, keyed by `type`."""
    deadline = _T0 + timedelta(minutes=10)
    vm = wire.ScheduledVm(
        vm_uuid=_VM, vm_name="web-1", deadline=deadline, latest_deadline=_T0 + timedelta(minutes=40)
    )
    samples: list[WireModel] = [
        wire.EvacuationScheduled(
            event_id=_EVENT, host="hv-01", tenant="acme", severity="severe",
            reasons=(wire.Reason(source="hwmon", sensor="coretemp/Package id 0", value=97.0, threshold=85.0,
                                 unit="celsius", message="Package id 0 at 97 °C, threshold 85 °C"),),
            vms=(vm,), allowed_replies=("ready", "postpone", "register"),
            reply_exchange="evacuator.replies", reply_routing_key="acme.hv-01",
        ),
        wire.EvacuationUpdated(
            event_id=_LATER, host="hv-01", cause="postponed",
            vms=(vm.model_copy(update={"deadline": deadline + timedelta(minutes=5)}),), **_COMMON,
        ),
        wire.EvacuationStarted(event_id=_LATER, host="hv-01", vm_uuid=_VM, vm_name="web-1",
                               **_COMMON),
        wire.VmEvacuated(event_id=_LATER, vm_uuid=_VM, vm_name="web-1", from_host="hv-01",
                         to_host="hv-02", **_COMMON),
        wire.EvacuationCompleted(event_id=_LATER, host="hv-01", moved_vm_uuids=(_VM,),
                                 **_COMMON),
        wire.EvacuationCancelled(event_id=_LATER, host="hv-01", vm_uuids=(_VM,),
                                 reason="host-a is healthy again", **_COMMON),
        wire.EvacuationFailed(event_id=_LATER, host="hv-01", vm_uuid=_VM, vm_name="web-1",
                              reason="copy of web-1.raw failed: no space left on hv-02", **_COMMON),
        wire.ReplyRejected(event_id=_LATER, tenant="acme", host="hv-01", code="stale_event",
                           reason="event names an evacuation that is over", in_reply_to="reply-7",
                           vm_uuid=_VM, at=_T0),
        wire.ReadyReply(vm_uuid=_VM, event_id=_EVENT),
        wire.PostponeReply(vm_uuid=_VM, postpone_seconds=600, event_id=_EVENT),
        wire.RegisterReply(vm_uuid=_VM, window_seconds=900),
    ]  # fmt: skip
    # Notices numbered as one host's outbox numbers them.
    numbered = [
        sample.model_copy(update={"incarnation": _SEQ + index})
        if "incarnation" in type(sample).model_fields
        else sample
        for index, sample in enumerate(samples, start=1)
    ]
    return {str(getattr(sample, "type")): sample for sample in numbered}  # noqa: B009  # every model has it


def schemas() -> dict[str, dict[str, Any]]:
    """model name -> its JSON Schema (draft 2020-12), exactly as pydantic exports it."""
    return {model.__name__: model.model_json_schema() for model in (*wire.NOTICE_MODELS, *wire.REPLY_MODELS)}


def _inline(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its local `#/$defs/` references rebased under components.schemas.<name>."""
    text = json.dumps(schema).replace('"#/$defs/', f'"#/components/schemas/{name}/$defs/')
    rebased: dict[str, Any] = json.loads(text)
    return rebased


_NOTICE_TEXT = {
    "evacuation_scheduled": "The tenant's VMs on a sick host will be cold-migrated at their deadlines.",
    "evacuation_updated": "Deadlines of the scheduled event changed (postpone granted, ready, new reading).",
    "evacuation_started": "The move of one VM has begun: it is being shut down now.",
    "vm_evacuated": 'One VM has moved ("vm moved"): it runs, or is defined if it was off, on to_host.',
    "evacuation_completed": "Every VM of the scheduled event has been handled.",
    "evacuation_cancelled": "The host recovered (or an operator cancelled) before these VMs moved.",
    "evacuation_failed": "Moving one VM failed; the reason is for humans.",
    "reply_rejected": "One of the tenant's replies was refused; code is stable, reason is for humans.",
}
_REPLY_TEXT = {
    "ready": "Preprocessing of the VM is done: move it now (before its deadline).",
    "postpone": "Move the VM later by postpone_seconds: granted up to the VM's latest_deadline, never on a "
    "failed host; the new deadline comes back in evacuation_updated.",
    "register": "Set the VM's preprocessing window for future evacuations (stored with the VM, capped by the "
    "admin's maximum).",
}
_DESCRIPTION = """\
Notices from the evacuator agent of each hypervisor to the tenants owning VMs on it, and the tenants' replies.
Each tenant is a broker user: it reads only the queue `<tenant>.notices` and publishes only to the replies
exchange with routing key `<tenant>.<host>`, and the broker checks `user_id` equals that user. A reply must
carry `user_id` (replies without it are rejected). Notices are persistent, published with confirms, from a
durable outbox: after an outage they arrive late but in order; a notice may arrive twice, so drop any whose
`event_id` was already handled. `incarnation` increases with every notice a host sends: keep the highest per
host. Replies naming an `event_id` must name the scheduled notice's. All times are UTC (RFC 3339)."""


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the whole contract."""
    samples = examples()
    model_of = {
        str(m.model_fields["type"].default): m.__name__ for m in (*wire.NOTICE_MODELS, *wire.REPLY_MODELS)
    }
    texts = {**_NOTICE_TEXT, **_REPLY_TEXT}
    messages = {
        kind: {
            "name": kind, "title": kind.replace("_", " "), "summary": texts[kind],
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{model_of[kind]}"},
            "bindings": {"amqp": {"messageType": kind, "deliveryMode": 2, "bindingVersion": "0.3.0"}},
            "examples": [{"name": kind, "payload": samples[kind].model_dump(mode="json")}],
        }
        for kind in (*wire.NOTICE_TYPES, *wire.REPLY_TYPES)
    }  # fmt: skip
    notice_refs = {kind: {"$ref": f"#/components/messages/{kind}"} for kind in wire.NOTICE_TYPES}
    reply_refs = {kind: {"$ref": f"#/components/messages/{kind}"} for kind in wire.REPLY_TYPES}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "evacuator tenant contract", "version": str(wire.SCHEMA_VERSION),
                 "description": " ".join(_DESCRIPTION.split())},
        "defaultContentType": "application/json",
        "servers": {"broker": {"host": "mq.example.net:5671", "protocol": "amqps",
                               "description": "RabbitMQ over TLS, the broker's certificate verified"}},
        "channels": {
            "tenantNotices": {
                "address": "{tenant}.notices",
                "description": "The tenant's durable queue, bound to `<tenant>.#` on the notices exchange "
                "(routing key `<tenant>.<host>.<type>`); declared when the tenant is provisioned.",
                "parameters": {"tenant": {"description": "The tenant's name, which is its broker user."}},
                "messages": notice_refs,
                "bindings": {"amqp": {"is": "queue", "queue": {"name": "{tenant}.notices", "durable": True,
                             "exclusive": False, "autoDelete": False}, "bindingVersion": "0.3.0"}},
            },
            "replies": {
                "address": "evacuator.replies",
                "description": "Topic exchange; routing key `<tenant>.<host>` (see reply_routing_key). "
                "The broker refuses any other key and a forged user_id.",
                "messages": reply_refs,
                "bindings": {"amqp": {"is": "routingKey", "bindingVersion": "0.3.0", "exchange": {
                    "name": "evacuator.replies", "type": "topic", "durable": True, "autoDelete": False}}},
            },
        },
        "operations": {
            "receiveNotices": {
                "action": "receive", "channel": {"$ref": "#/channels/tenantNotices"},
                "summary": "Consume, handle, then ack; drop a notice whose event_id was already handled.",
                "messages": [{"$ref": f"#/channels/tenantNotices/messages/{k}"} for k in wire.NOTICE_TYPES],
            },
            "sendReply": {
                "action": "send", "channel": {"$ref": "#/channels/replies"},
                "summary": "Publish with user_id = the tenant's user, persistent, mandatory, with confirms.",
                "bindings": {"amqp": {"userId": "{tenant}", "deliveryMode": 2, "mandatory": True,
                                      "bindingVersion": "0.3.0"}},
                "messages": [{"$ref": f"#/channels/replies/messages/{k}"} for k in wire.REPLY_TYPES],
            },
        },
        "components": {
            "messages": messages,
            "schemas": {name: _inline(name, schema) for name, schema in schemas().items()},
        },
    }  # fmt: skip


def render_asyncapi() -> str:
    return "# Generated by `python -m notifiers.contract docs` from notifiers/messages.py: do not edit.\n" + (
        yaml.safe_dump(asyncapi_document(), sort_keys=False, allow_unicode=True, width=110)
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
