"""Wire models: round trips, UTC deadlines, and the reasons parse_reply/parse_notice give for bad bodies."""

from __future__ import annotations

import json
import ssl
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from notifiers.connection import connection_parameters
from notifiers.errors import (
    BrokerUnavailable,
    InvalidName,
    MalformedNotice,
    MalformedReply,
    UnknownNoticeType,
)
from notifiers.messages import (
    MAX_BODY_BYTES,
    NOTICE_TYPES,
    AtRiskVm,
    EvacuationCancelled,
    EvacuationCompleted,
    EvacuationFailed,
    EvacuationScheduled,
    EvacuationStarted,
    EvacuationUpdated,
    HostAtRisk,
    PostponeReply,
    ReadyReply,
    Reason,
    RegisterReply,
    ReplyRejected,
    ScheduledVm,
    VmEvacuated,
    encode,
    notice_route,
    parse_notice,
    parse_reply,
)
from notifiers.settings import BrokerSettings
from notifiers.topology import host_replies_queue, notice_routing_key, reply_routing_key, tenant_queue
from notifiers.wire import WireRejectCode

T0 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
EVENT = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"


def scheduled(**changes: object) -> EvacuationScheduled:
    fields: dict[str, object] = {
        "event_id": EVENT,
        "host": "hv1",
        "tenant": "acme",
        "severity": "severe",
        "reasons": [
            Reason(
                source="hwmon",
                sensor="coretemp/Package id 0",
                value=97.0,
                threshold=90.0,
                unit="celsius",
                message="hot",
            )
        ],
        "vms": [ScheduledVm(vm_uuid=VM, vm_name="web-1", deadline=T0 + timedelta(minutes=10))],
        "reply_exchange": "evacuator.replies",
        "reply_routing_key": "acme.hv1",
    }
    return EvacuationScheduled.model_validate({**fields, **changes})


NOTICES = [
    scheduled(),
    VmEvacuated(
        event_id=EVENT, tenant="acme", host="hv1", vm_uuid=VM, vm_name="web-1", from_host="hv1",
        to_host="hv2", at=T0,
    ),
    EvacuationFailed(
        event_id=EVENT, tenant="acme", host="hv1", vm_uuid=VM, vm_name="web-1", reason="copy failed", at=T0
    ),
    EvacuationUpdated(
        tenant="acme", host="hv1", cause="postponed", at=T0, scheduled_event_id=EVENT, incarnation=7,
        vms=(ScheduledVm(vm_uuid=VM, vm_name="web-1", deadline=T0, not_before=T0, latest_deadline=T0),),
    ),
    EvacuationStarted(
        tenant="acme", host="hv1", vm_uuid=VM, vm_name="web-1", at=T0, scheduled_event_id=EVENT
    ),
    EvacuationCompleted(tenant="acme", host="hv1", moved_vm_uuids=(VM,), at=T0),
    EvacuationCancelled(tenant="acme", host="hv1", vm_uuids=(VM,), reason="host recovered", at=T0),
    ReplyRejected(
        tenant="acme", host="hv1", code=WireRejectCode.UNKNOWN_VM, reason="no such VM on this host",
        in_reply_to="m1", vm_uuid=VM, at=T0,
    ),
]  # fmt: skip
# Every type, the one added since last (tests below index NOTICES by position).
ALL_NOTICES = [*NOTICES, HostAtRisk(tenant="acme", host="hv1", severity="moderate", reasons=(), at=T0,
                                    vms=(AtRiskVm(vm_uuid=VM, vm_name="web-1"),))]  # fmt: skip


def test_every_notice_type_has_a_model_in_the_tests() -> None:
    assert sorted(n.type for n in ALL_NOTICES) == sorted(NOTICE_TYPES)


@pytest.mark.parametrize("notice", ALL_NOTICES, ids=lambda n: n.type)
def test_every_notice_survives_a_round_trip(notice: EvacuationScheduled) -> None:
    assert parse_notice(encode(notice)) == notice


def test_scheduled_notice_json_is_what_tenants_read() -> None:
    document = json.loads(encode(scheduled()))
    assert document["schema_version"] == 1
    assert document["type"] == "evacuation_scheduled"
    assert document["vms"][0] == {
        "vm_uuid": VM,
        "vm_name": "web-1",
        "deadline": "2026-11-25T03:10:00Z",
        "not_before": None,
        "latest_deadline": None,
    }
    assert document["incarnation"] == 1
    assert document["allowed_replies"] == ["ready"]
    assert document["reasons"][0]["unit"] == "celsius"


def test_vm_evacuated_names_the_host_it_left_as_host_and_from_host() -> None:
    document = json.loads(encode(NOTICES[1]))
    assert document["host"] == document["from_host"] == "hv1"
    without_host = {key: value for key, value in document.items() if key != "host"}
    with pytest.raises(ValidationError, match="host"):
        VmEvacuated.model_validate(without_host)
    with pytest.raises(ValidationError, match="must be the same host"):
        VmEvacuated.model_validate({**document, "host": "hv2"})


def test_reply_rejected_code_is_one_of_the_wire_codes() -> None:
    rejected = NOTICES[-1]
    assert isinstance(rejected, ReplyRejected) and rejected.code is WireRejectCode.UNKNOWN_VM
    stale = ReplyRejected.model_validate({**rejected.model_dump(), "code": "stale_event"})
    assert stale.code is WireRejectCode.STALE_EVENT
    with pytest.raises(ValidationError, match="code"):
        ReplyRejected.model_validate({**rejected.model_dump(), "code": "not_owner"})  # never told a tenant


def test_deadline_without_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        ScheduledVm(vm_uuid=VM, vm_name="web-1", deadline=datetime(2026, 11, 25, 3, 10))


def test_deadline_in_another_zone_is_converted_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    vm = ScheduledVm(vm_uuid=VM, vm_name="web-1", deadline=datetime(2026, 11, 25, 4, 10, tzinfo=paris))
    assert vm.deadline == T0 + timedelta(minutes=10)
    assert vm.deadline.tzinfo == UTC


def test_new_notices_get_a_fresh_uuid4_event_id() -> None:
    a, b = (
        EvacuationFailed(tenant="acme", host="hv1", vm_uuid=VM, vm_name="w", reason="r", at=T0) for _ in "ab"
    )
    assert a.event_id != b.event_id
    assert uuid.UUID(a.event_id).version == 4


def test_event_id_must_be_a_uuid4() -> None:
    with pytest.raises(ValidationError, match="version 4"):
        scheduled(event_id="0b5e1f0a-5c1e-1d2a-9a51-3f7f4c2d9e01")


def test_scheduled_notice_needs_at_least_one_vm() -> None:
    with pytest.raises(ValidationError, match="vms"):
        scheduled(vms=[])


def test_vm_uuid_is_normalised_to_lower_case() -> None:
    assert ReadyReply(vm_uuid=VM.upper()).vm_uuid == VM


@pytest.mark.parametrize(
    ("notice", "route"),
    [(NOTICES[0], ("acme", "hv1")), (NOTICES[1], ("acme", "hv1")), (NOTICES[2], ("acme", "hv1"))],
)
def test_notice_route_is_tenant_and_failing_host(notice: EvacuationScheduled, route: tuple[str, str]) -> None:
    assert notice_route(notice) == route


@pytest.mark.parametrize(
    "reply",
    [
        ReadyReply(vm_uuid=VM, event_id=EVENT),
        PostponeReply(vm_uuid=VM, postpone_seconds=300, event_id=EVENT),
        RegisterReply(vm_uuid=VM, window_seconds=0),
    ],
    ids=lambda r: r.type,
)
def test_every_reply_survives_a_round_trip(reply: ReadyReply) -> None:
    assert parse_reply(encode(reply)) == reply


def test_ready_reply_without_event_id_is_accepted() -> None:
    assert (
        parse_reply(b'{"schema_version": 1, "type": "ready", "vm_uuid": "%s"}' % VM.encode()).event_id is None
    )


READY = {"schema_version": 1, "type": "ready", "vm_uuid": VM}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"ready!", "not UTF-8 JSON"),
        (b"[1, 2]", "JSON list, expected an object"),
        (b"{}", "schema_version is missing, expected 1"),
        (json.dumps({**READY, "schema_version": 2}).encode(), "schema_version is 2, expected 1"),
        (json.dumps({**READY, "schema_version": "1"}).encode(), "schema_version is '1', expected 1"),
        (
            json.dumps({**READY, "type": "reboot"}).encode(),
            "type is 'reboot', expected one of ready, postpone, register",
        ),
        (json.dumps({**READY, "type": ["ready"]}).encode(), "type is ['ready'], expected one of"),
        (json.dumps({**READY, "schema_version": True}).encode(), "schema_version is True, expected 1"),
        (json.dumps({"schema_version": 1, "vm_uuid": VM}).encode(), "type is None"),
        (json.dumps({"schema_version": 1, "type": "ready"}).encode(), "vm_uuid: Field required"),
        (json.dumps({**READY, "vm_uuid": "web-1"}).encode(), "vm_uuid: Value error"),
        (json.dumps({**READY, "event_id": "nope"}).encode(), "event_id: Value error"),
        (json.dumps({**READY, "admin": True}).encode(), "admin: Extra inputs are not permitted"),
        (b" " * (MAX_BODY_BYTES + 1), "more than the 65536 allowed"),
        (b"[" * 5000 + b"]" * 5000, "not UTF-8 JSON"),
        (json.dumps({**READY, "type": "postpone"}).encode(), "postpone_seconds: Field required"),
        (json.dumps({**READY, "type": "postpone", "postpone_seconds": 0}).encode(), "greater than or equal"),
        (json.dumps({**READY, "type": "postpone", "postpone_seconds": "60"}).encode(), "valid integer"),
        (json.dumps({**READY, "type": "postpone", "postpone_seconds": 1.5}).encode(), "valid integer"),
        (json.dumps({**READY, "type": "postpone", "postpone_seconds": 10**9}).encode(), "less than or equal"),
        (json.dumps({**READY, "type": "register", "window_seconds": -1}).encode(), "greater than or equal"),
        (json.dumps({**READY, "type": "register", "window_seconds": True}).encode(), "valid integer"),
        (json.dumps({**READY, "type": "register", "window_seconds": 5, "event_id": EVENT}).encode(), "Extra"),
    ],
)
def test_parse_reply_names_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedReply) as caught:
        parse_reply(body)
    assert reason in caught.value.reason


def test_parse_notice_refuses_a_reply() -> None:
    with pytest.raises(MalformedNotice, match="type is 'ready'"):
        parse_notice(encode(ReadyReply(vm_uuid=VM)))


def test_a_notice_type_a_newer_service_added_is_told_apart_from_garbage() -> None:
    newer = {"schema_version": 1, "type": "host_recovered", "tenant": "acme", "host": "hv1"}
    with pytest.raises(UnknownNoticeType, match="host_recovered"):
        parse_notice(json.dumps(newer).encode())
    for garbage in ("Host Recovered", "", 7, "x" * 200):
        with pytest.raises(MalformedNotice) as caught:
            parse_notice(json.dumps({**newer, "type": garbage}).encode())
        assert not isinstance(caught.value, UnknownNoticeType), garbage


def test_parse_notice_refuses_a_naive_deadline() -> None:
    document = json.loads(encode(scheduled()))
    document["vms"][0]["deadline"] = "2026-11-25T03:10:00"
    with pytest.raises(MalformedNotice, match=r"vms\.0\.deadline"):
        parse_notice(json.dumps(document).encode())


def test_broker_settings_never_show_the_password() -> None:
    settings = BrokerSettings(url=SecretStr("amqp://evacuator:s3cret@mq:5672/%2F"))
    for shown in (repr(settings), str(settings), settings.model_dump_json(), settings.redacted_url):
        assert "s3cret" not in shown
    assert settings.redacted_url == "amqp://evacuator:***@mq:5672/%2F"
    assert settings.url.get_secret_value() == "amqp://evacuator:s3cret@mq:5672/%2F"


@pytest.mark.parametrize(
    "document",
    [{"url": "http://u:s3cret@mq/"}, {"url": "amqp://u:s3cret@mq/", "exchange": "x"}],
    ids=["wrong_scheme", "unknown_field"],
)
def test_broker_settings_errors_do_not_echo_the_url(document: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as caught:
        BrokerSettings.model_validate(document)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("name", ["hv1.example.org", "a#", "*", "", "-x", "x" * 64, "acme evil"])
def test_names_that_cannot_be_one_routing_key_word_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        reply_routing_key(name, "hv1")
    with pytest.raises(InvalidName):
        notice_routing_key("acme", name, "vm_evacuated")


def test_routing_keys_and_queue_names() -> None:
    assert notice_routing_key("acme", "hv1", "vm_evacuated") == "acme.hv1.vm_evacuated"
    assert reply_routing_key("acme", "hv1") == "acme.hv1"
    assert tenant_queue("acme") == "acme.notices"
    assert host_replies_queue("hv1", replies_exchange="evacuator.replies") == "evacuator.replies.hv1"


def test_reason_without_a_reading_round_trips_as_null() -> None:
    # A NaN would serialise as null and then fail to parse: "no data" must be None on the wire.
    notice = scheduled(
        reasons=[Reason(sensor="ipmi/CPU Temp", value=None, threshold=90.0, unit="celsius", message="stale")]
    )
    assert parse_notice(encode(notice)) == notice
    assert json.loads(encode(notice))["reasons"][0]["value"] is None


@pytest.mark.parametrize(
    ("document", "why"),
    [
        ({"url": "amqp://u:p@mq/", "ca_file": "/etc/ca.pem"}, "need an amqps:// url"),
        ({"url": "amqps://u:p@mq/", "cert_file": "/etc/c.pem"}, "go together"),
    ],
    ids=["tls_files_without_amqps", "cert_without_key"],
)
def test_broker_tls_settings_must_be_coherent(document: dict[str, str], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        BrokerSettings.model_validate(document)


def test_amqps_parameters_verify_the_broker_against_the_ca(tmp_path: Path) -> None:
    with pytest.raises(BrokerUnavailable, match="cannot load the TLS files"):
        connection_parameters("amqps://u:p@mq.example.net:5671/%2F", ca_file=tmp_path / "missing.pem")
    parameters = connection_parameters("amqps://u:p@mq.example.net:5671/%2F")
    context = parameters.ssl_options.context
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert parameters.ssl_options.server_hostname == "mq.example.net"
    assert connection_parameters("amqp://u:p@mq/%2F").ssl_options is None
