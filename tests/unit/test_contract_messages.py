"""What goes on the wire validates against the published schema files: every notice as the service builds it
(TenantNotifier) and its outbox encodes it, and every reply as the tenant clients write it."""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from evacuator.incident.ledger import IncidentLedger, LedgerVm
from evacuator.incident.notices import TenantNotifier
from monitors.verdicts import HostVerdict, Severity
from notifiers.messages import (
    NOTICE_MODELS,
    NOTICE_TYPES,
    REPLY_MODELS,
    Notice,
    PostponeReply,
    ReadyReply,
    RegisterReply,
    encode,
)
from notifiers.outbox import Outbox
from notifiers.wire import WireRejectCode
from tests.fakes.incidents import opened
from tests.unit.published_schemas import errors, file_validator

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
OTHER_VM = "1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12"
EVENT = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
MODEL_OF = {str(m.model_fields["type"].default): m.__name__ for m in (*NOTICE_MODELS, *REPLY_MODELS)}
EXAMPLE_CLIENT = Path(__file__).resolve().parents[2] / "examples" / "tenant_client.py"


class OutboxSink:
    """The NoticeSink as the daemon has it: each notice stored in a real outbox, its body kept as sent."""

    def __init__(self, path: Path) -> None:
        self.outbox = Outbox(path, clock=lambda: T0)
        self.bodies: list[bytes] = []

    def ensure_tenant_queue(self, tenant: str) -> Future[None]:
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def publish(self, tenant: str, host: str, notice: Notice) -> Future[datetime]:
        self.bodies.append(self.outbox.put(notice).body)
        done: Future[datetime] = Future()
        done.set_result(T0)
        return done


def published(tmp_path: Path, severity: Severity, *, answers_replies: bool = True) -> list[dict[str, Any]]:
    """Every notice a service on hv1 sends through one incident of `severity`, as the tenant receives them."""
    sink = OutboxSink(tmp_path / f"outbox-{severity}-{answers_replies}.sqlite")
    latest = None if severity is Severity.FAILED or not answers_replies else T0 + timedelta(minutes=40)
    vms = [LedgerVm(vm_uuid=uuid, vm_name=name, tenant="acme", deadline=T0 + timedelta(minutes=10),
                    latest_deadline=latest)
           for uuid, name in ((VM, "web-1"), (OTHER_VM, "web-2"))]  # fmt: skip
    ledger: IncidentLedger = opened(vms, {"acme": EVENT}, severity=severity, opened_at=T0)
    notifier = TenantNotifier(publisher=sink, host="hv1", replies_exchange="evacuator.replies",
                              clock=lambda: T0, events=ledger, answers_replies=answers_replies)  # fmt: skip
    incident = ledger.open_incident()
    assert incident is not None
    records = ledger.records(incident.incident_id)
    sick = HostVerdict(severity=severity, reasons=incident.reasons, at=T0)
    notifier.host_at_risk(tenant="acme", verdict=sick, vms=[(VM, "web-1"), (OTHER_VM, "web-2")])
    notifier.evacuation_scheduled(tenant="acme", event_id=EVENT, incident=incident, vms=records)
    later = ledger.reschedule(records[0], T0 + timedelta(minutes=20))
    notifier.evacuation_updated(tenant="acme", cause="postponed", vms=(later,))
    notifier.evacuation_updated(tenant="acme", cause="expedited", vms=(ledger.reschedule(later, T0),))
    notifier.evacuation_started(tenant="acme", vm_uuid=VM, vm_name="web-1")
    notifier.vm_evacuated(tenant="acme", vm_uuid=VM, vm_name="web-1", to_host="hv2", downtime_seconds=9.5,
                          bytes_moved=4096)  # fmt: skip
    notifier.evacuation_failed(tenant="acme", vm_uuid=OTHER_VM, vm_name="web-2", reason="no room on hv2")
    notifier.evacuation_completed(tenant="acme", moved=(VM,), failed=(OTHER_VM,))
    notifier.evacuation_cancelled(tenant="acme", vm_uuids=(OTHER_VM,), reason="hv1 is healthy again")
    for index, code in enumerate(WireRejectCode):
        notifier.reply_rejected(tenant="acme", code=code, reason=f"refused: {code}",
                                in_reply_to=None if index % 2 else f"message-{index}",
                                vm_uuid=None if index % 3 else VM)  # fmt: skip
    sink.outbox.close()
    return [json.loads(body) for body in sink.bodies]


@pytest.mark.parametrize(
    ("severity", "answers_replies"),
    [(Severity.SEVERE, True), (Severity.FAILED, True), (Severity.SEVERE, False), (Severity.MODERATE, True)],
)
def test_every_notice_the_service_sends_validates_against_its_published_schema(
    tmp_path: Path, severity: Severity, answers_replies: bool
) -> None:
    notices = published(tmp_path, severity, answers_replies=answers_replies)
    assert {notice["type"] for notice in notices} == set(NOTICE_TYPES)
    for notice in notices:
        assert errors(file_validator(MODEL_OF[notice["type"]]), notice) == [], notice["type"]


def test_updates_repeat_the_latest_deadline_of_the_scheduled_notice(tmp_path: Path) -> None:
    notices = published(tmp_path, Severity.SEVERE)
    scheduled = next(n for n in notices if n["type"] == "evacuation_scheduled")
    latest = {vm["vm_uuid"]: vm["latest_deadline"] for vm in scheduled["vms"]}
    updates = [n for n in notices if n["type"] == "evacuation_updated"]
    assert [u["cause"] for u in updates] == ["postponed", "expedited"]
    assert all(vm["latest_deadline"] == latest[vm["vm_uuid"]] is not None for u in updates for vm in u["vms"])


def test_the_service_numbers_and_identifies_every_notice_on_its_own(tmp_path: Path) -> None:
    notices = published(tmp_path, Severity.SEVERE)
    incarnations = [notice["incarnation"] for notice in notices]
    assert incarnations == sorted(set(incarnations))
    assert len({notice["event_id"] for notice in notices}) == len(notices)
    moved = next(n for n in notices if n["type"] == "vm_evacuated")
    assert moved["host"] == moved["from_host"] == "hv1"
    assert (moved["downtime_seconds"], moved["bytes_moved"]) == (9.5, 4096)


def _example_client() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tenant_client_example", EXAMPLE_CLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "body",
    [
        encode(ReadyReply(vm_uuid=VM)),  # as notifiers.tenant.TenantClient sends them
        encode(ReadyReply(vm_uuid=VM, event_id=EVENT)),
        encode(PostponeReply(vm_uuid=VM, postpone_seconds=600, event_id=EVENT)),
        encode(RegisterReply(vm_uuid=VM, window_seconds=900)),
    ],
    ids=["ready", "ready_naming_the_event", "postpone", "register"],
)
def test_replies_built_from_the_models_validate(body: bytes) -> None:
    reply = json.loads(body)
    assert errors(file_validator(MODEL_OF[reply["type"]]), reply) == []


def test_replies_written_by_the_example_client_validate() -> None:
    client = _example_client()
    for reply in (
        client.reply_body("ready", VM, event_id=EVENT),
        client.reply_body("postpone", VM, postpone_seconds=300, event_id=EVENT),
        client.reply_body("register", VM, window_seconds=900),
    ):
        assert errors(file_validator(MODEL_OF[reply["type"]]), reply) == [], reply
