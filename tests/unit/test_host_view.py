"""The host view without a broker: the state message's bounds, who is believed, which state is a host's
latest, staleness, the room's arithmetic, the publisher's message and the `hosts` command's table."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from evacuator.commands.hosts import format_rows, rows
from evacuator.hypervisor.room import ActiveVm, NodeReading, RoomCaps, room_of
from evacuator.peers.host_state import MAX_STATE_BYTES, HostStateMessage, expected_user, state_routing_key
from evacuator.peers.host_view import HostStateSubscriber, HostView
from evacuator.peers.messages import PeerTrust
from evacuator.peers.state_publisher import HostStatus, Switches, build_state
from evacuator.placement.model import Verdict
from evacuator.placement.view import supersedes
from evacuator.settings import HostViewSettings
from evacuator.wiring.host_view import status_of
from monitors.verdicts import HostVerdict, Reason, Severity
from tests.fakes.room import GIB, a_room

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STALE_AFTER = 15.0
INCARNATION = "0123456789abcdef"
TRUST = PeerTrust(own_user="host.hv-a", peer_users={"hv-b": "svc-b"})


def state(host: str = "hv-b", *, sequence: int = 0, incarnation: str = INCARNATION, sent_at: datetime = T0,
          **changes: Any) -> HostStateMessage:  # fmt: skip
    message = build_state(host=host, incarnation=incarnation, sequence=sequence, sent_at=sent_at,
                          status=HostStatus(verdict=Verdict.HEALTHY), switches=Switches(), room=a_room())
    return message.model_copy(update=changes)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def subscriber(clock: Clock | None = None) -> HostStateSubscriber:
    def no_broker() -> Any:
        raise AssertionError("these tests hand messages to receive() directly")

    return HostStateSubscriber(no_broker, trust=TRUST, host="hv-a", exchange="evacuator.peers",
                               view=HostView(stale_after_seconds=STALE_AFTER), clock=clock or Clock())


def deliver(sub: HostStateSubscriber, message: HostStateMessage, *, user: str | None,
            key: str | None = None) -> bool:  # fmt: skip
    return sub.receive(key or state_routing_key(message.host), user, message.model_dump_json().encode())


def test_a_state_round_trips_and_becomes_a_placement_host_state() -> None:
    sub = subscriber()
    assert deliver(sub, state(), user="svc-b")
    (host,) = sub.view.hosts(T0)
    assert (host.name, host.verdict, host.seen_at, host.accepting) == ("hv-b", Verdict.HEALTHY, T0, True)
    assert (host.capacity.memory_bytes, host.free.vcpus, host.free.disk_bytes) == (16 * GIB, 7, 90 * GIB)
    assert host.functions == frozenset({("acme", "db")})
    assert sub.view.heard()[0].running_vms == 1


@pytest.mark.parametrize(
    ("host", "user", "believed"),
    [
        ("hv-b", "svc-b", True),  # a configured peer: its broker_user
        ("hv-b", "host.hv-b", False),  # the convention does not override a configured user
        ("hv-c", "host.hv-c", True),  # any other host of the cloud: host.<name>
        ("hv-c", "host.hv-b", False),  # one host passing for another
        ("hv-a", "host.hv-a", True),  # this host's own state, as its own user
        ("hv-b", None, False),  # no user_id: the broker checked nothing
    ],
)
def test_a_state_is_believed_only_from_its_hosts_user(host: str, user: str | None, believed: bool) -> None:
    sub = subscriber()
    with capture_logs() as logs:
        assert deliver(sub, state(host), user=user) is believed
    assert [e["event"] for e in logs] == ([] if believed else ["host_state_refused"])


def test_a_routing_key_that_names_another_host_than_the_body_is_refused() -> None:
    sub = subscriber()
    with capture_logs() as logs:
        assert not deliver(sub, state("hv-c"), user="host.hv-c", key="state.hv-b")
    assert logs[0]["event"] == "host_state_refused"
    assert expected_user(TRUST, "hv-z") == "host.hv-z"


@pytest.mark.parametrize(
    "body",
    [
        b"{" + b" " * MAX_STATE_BYTES + b"}",
        b"not json",
        json.dumps({**json.loads(state().model_dump_json()), "schema_version": 2}).encode(),
        json.dumps({**json.loads(state().model_dump_json()), "extra": 1}).encode(),
        json.dumps({**json.loads(state().model_dump_json()), "sent_at": "2026-03-01T12:00:00"}).encode(),
        json.dumps({**json.loads(state().model_dump_json()), "verdict": "fine"}).encode(),
        json.dumps({**json.loads(state().model_dump_json()), "reasons": ["x"] * 17}).encode(),
        json.dumps({**json.loads(state().model_dump_json()), "quarantined": "no"}).encode(),
        json.dumps({**json.loads(state().model_dump_json()),
                    "room": {**json.loads(state().room.model_dump_json()), "memory_capacity_bytes": 1 << 62}}
                   ).encode(),
        json.dumps({**json.loads(state().model_dump_json()),
                    "room": {**json.loads(state().room.model_dump_json()), "running_vms": -1}}).encode(),
    ],
    ids=["too-big", "not-json", "schema-2", "extra-field", "naive-time", "verdict", "reasons", "bool-as-text",
         "absurd-memory", "negative-vms"],
)
def test_a_malformed_or_oversized_state_is_dropped_and_logged(body: bytes) -> None:
    sub = subscriber()
    with capture_logs() as logs:
        assert not sub.receive("state.hv-b", "svc-b", body)
    assert [e["event"] for e in logs] == ["host_state_dropped"]
    assert sub.view.heard() == []


def test_an_older_sequence_of_the_same_run_is_ignored_and_a_newer_kept() -> None:
    sub = subscriber()
    assert deliver(sub, state(sequence=5), user="svc-b")
    assert not deliver(sub, state(sequence=4, verdict=Verdict.SEVERE), user="svc-b")
    assert not deliver(sub, state(sequence=5, verdict=Verdict.SEVERE), user="svc-b")
    assert deliver(sub, state(sequence=6, verdict=Verdict.MODERATE), user="svc-b")
    assert sub.view.hosts(T0)[0].verdict is Verdict.MODERATE


def test_a_restarted_daemon_replaces_the_old_run_unless_its_state_is_older() -> None:
    clock = Clock()
    sub = subscriber(clock)
    assert deliver(sub, state(sequence=900), user="svc-b")
    # A late state of an older run, sent before the kept one: ignored.
    assert not deliver(sub, state(sequence=0, incarnation="f" * 16, sent_at=T0 - timedelta(seconds=1)),
                       user="svc-b")  # fmt: skip
    assert deliver(sub, state(sequence=0, incarnation="e" * 16, sent_at=T0 + timedelta(seconds=1)),
                   user="svc-b")  # fmt: skip
    # A clock stepped back at a restart: believed once the kept state is stale.
    clock.now = T0 + timedelta(seconds=STALE_AFTER + 1)
    restarted = state(sequence=0, incarnation="d" * 16, sent_at=T0 - timedelta(hours=1))
    assert deliver(sub, restarted, user="svc-b")


def test_a_host_not_heard_within_stale_after_is_unknown() -> None:
    view = HostView(stale_after_seconds=STALE_AFTER)
    view.offer(state().heard(T0))
    assert view.hosts(T0 + timedelta(seconds=STALE_AFTER))[0].verdict is Verdict.HEALTHY
    stale = view.hosts(T0 + timedelta(seconds=STALE_AFTER + 0.1))[0]
    assert stale.verdict is Verdict.UNKNOWN and not stale.fresh(T0 + timedelta(seconds=16), STALE_AFTER)


def test_supersedes_a_first_state_always() -> None:
    assert supersedes(state().heard(T0), None, stale_after_seconds=1)


def test_the_room_is_capped_and_the_active_vms_taken_off() -> None:
    reading = NodeReading(memory_bytes=64 * GIB, cpus=16, pool_capacity_bytes=100, pool_allocation_bytes=30,
                          pool_available_bytes=70, active=[
                              ActiveVm(memory_bytes=4 * GIB, vcpus=2, function=("acme", "db")),
                              ActiveVm(memory_bytes=2 * GIB, vcpus=1)])  # fmt: skip
    room = room_of(reading, RoomCaps())
    got = (room.memory_capacity_bytes, room.memory_free_bytes, room.vcpus_capacity, room.vcpus_free)
    assert got == (64 * GIB, 58 * GIB, 16, 13)
    capped = room_of(reading, RoomCaps(guest_memory_bytes=5 * GIB, guest_vcpus=2))
    assert (capped.memory_free_bytes, capped.vcpus_free, capped.running_vms) == (-1 * GIB, -1, 2)
    assert capped.functions == frozenset({("acme", "db")}) and capped.pool_available_bytes == 70


def test_without_its_room_a_host_says_it_is_unknown_and_takes_nothing() -> None:
    message = build_state(host="hv-a", incarnation=INCARNATION, sequence=3, sent_at=T0,
                          status=HostStatus(verdict=Verdict.HEALTHY), switches=Switches(), room=None)
    got = (message.verdict, message.accepting, message.room.memory_capacity_bytes)
    assert got == (Verdict.UNKNOWN, False, 0)
    assert message.reasons[0].startswith("room unreadable")


def test_the_admins_switches_travel_with_the_state() -> None:
    message = build_state(host="hv-a", incarnation=INCARNATION, sequence=0, sent_at=T0, status=HostStatus(),
                          switches=Switches(maintenance=True, accepting=False), room=a_room())
    assert (message.maintenance, message.accepting, message.verdict) == (True, False, Verdict.UNKNOWN)


def test_a_host_publishing_its_libvirt_uri_can_be_reached_from_the_view() -> None:
    uri = "qemu+tls://hv-b.example.net/system"
    reaching = build_state(host="hv-b", incarnation=INCARNATION, sequence=0, sent_at=T0,
                           status=HostStatus(verdict=Verdict.HEALTHY),
                           switches=Switches(libvirt_uri=uri, storage_pool="vms"), room=a_room())  # fmt: skip
    sub = subscriber()
    assert deliver(sub, reaching, user="svc-b")
    assert sub.view.reach_of("hv-b") == (uri, "vms") and sub.view.reach_of("hv-z") is None


def test_a_host_publishing_no_uri_sends_no_such_field_and_an_older_state_is_taken() -> None:
    """The publisher leaves the optional fields out (a daemon of the previous version, which forbids unknown
    fields, still takes its state), and a state without them is no reachable host."""
    plain = build_state(host="hv-b", incarnation=INCARNATION, sequence=0, sent_at=T0, status=HostStatus(),
                        switches=Switches(storage_pool="vms"), room=a_room())
    body = plain.model_dump_json(exclude_none=True)
    assert "libvirt_uri" not in body and "storage_pool" not in body
    sub = subscriber()
    assert sub.receive("state.hv-b", "svc-b", body.encode())
    assert sub.view.reach_of("hv-b") is None


@pytest.mark.parametrize("uri", ["not a uri", "qemu+tls://hv b/system", "x" * 1025, ""])
def test_a_nonsense_libvirt_uri_drops_the_state(uri: str) -> None:
    body = json.dumps({**json.loads(state().model_dump_json()), "libvirt_uri": uri, "storage_pool": "vms"})
    sub = subscriber()
    with capture_logs() as logs:
        assert not sub.receive("state.hv-b", "svc-b", body.encode())
    assert logs[0]["event"] == "host_state_dropped"


@pytest.mark.parametrize(
    ("any_host", "host", "user", "is_peer"),
    [
        (False, "hv-b", "svc-b", True),  # a configured peer
        (False, "hv-c", None, False),  # scope peers: no other host is one
        (True, "hv-c", "host.hv-c", True),  # scope cloud: any host, as the user `host add` made
        (True, "hv-b", "svc-b", True),  # a configured peer keeps its configured user
    ],
)
def test_in_a_cloud_scope_every_host_user_is_a_peer(any_host: bool, host: str, user: str | None,
                                                    is_peer: bool) -> None:  # fmt: skip
    trust = PeerTrust(own_user="host.hv-a", peer_users={"hv-b": "svc-b"}, any_host=any_host)
    assert trust.user_of(host) == user
    assert trust.is_peer(user) is is_peer


@pytest.mark.parametrize("user", ["acme", "host.", "host.hv c", "host.a.b", "guest", "HOST.hv-c"])
def test_a_user_that_is_no_host_user_is_never_a_peer_even_in_a_cloud_scope(user: str) -> None:
    assert not PeerTrust(own_user="host.hv-a", peer_users={}, any_host=True).is_peer(user)


@pytest.mark.parametrize(
    ("severity", "quarantined"),
    [(Severity.HEALTHY, False), (Severity.MODERATE, True), (Severity.SEVERE, False),
     (Severity.UNKNOWN, False)],
)
def test_a_moderate_verdict_is_published_as_quarantined(severity: Severity, quarantined: bool) -> None:
    reason = Reason(source="hwmon", sensor="cpu", value=91.0, threshold=90.0, unit="celsius", message="hot")
    status = status_of(HostVerdict(severity=severity, reasons=(reason,), at=T0))
    got = (status.verdict, status.quarantined, status.reasons)
    assert got == (Verdict(severity.value), quarantined, ("hot",))


def test_stale_after_defaults_to_three_intervals_and_must_exceed_one() -> None:
    assert HostViewSettings().stale_after == 15.0
    assert HostViewSettings(interval_seconds=2).stale_after == 6.0
    with pytest.raises(ValueError, match="must exceed interval_seconds"):
        HostViewSettings(interval_seconds=5, stale_after_seconds=5)


def test_the_hosts_table_marks_stale_and_unheard_hosts() -> None:
    view = HostView(stale_after_seconds=STALE_AFTER)
    view.offer(state("hv-b", sequence=7).heard(T0))
    old = state("hv-c", quarantined=True, verdict=Verdict.MODERATE, reasons=["cpu hot"])
    view.offer(old.heard(T0 - timedelta(seconds=60)))
    found = rows(view.heard(), ["hv-a", "hv-b", "hv-c"], T0 + timedelta(seconds=2), STALE_AFTER)
    by_host = {row.host: row for row in found}
    assert [row.host for row in found] == ["hv-a", "hv-b", "hv-c"]
    assert not by_host["hv-a"].heard
    b = by_host["hv-b"]
    assert (b.verdict, b.sequence, b.age_seconds) == ("healthy", 7, 2.0)
    assert (by_host["hv-c"].verdict, by_host["hv-c"].published_verdict, by_host["hv-c"].stale) == (
        "unknown", "moderate", True)
    text = format_rows(found)
    assert "not heard" in text and "quarantined,STALE" in text and "hv-c: cpu hot" in text
    assert "15.0/16.0" in text  # free/capacity memory in GiB
    json.dumps([dataclasses.asdict(row) for row in found])  # the --json output serialises


def test_hosts_exits_1_with_a_clear_message_when_the_broker_cannot_be_reached(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from evacuator.cli import main

    config = tmp_path / "evacuator.yaml"
    config.write_text(
        "host: {name: hv-a}\n"
        "peers: [{name: hv-b, libvirt_uri: 'qemu+tcp://hv-b/system'}]\n"
        "data_channel: {enabled: false}\n"
        "broker: {url: 'amqp://host.hv-a:S3cretPw@127.0.0.1:1/%2F', peers_vhost: evacuator-peers}\n"
    )
    assert main(["hosts", "--config", str(config), "--listen-seconds", "0.1"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to amqp://host.hv-a:***@127.0.0.1:1" in err and "S3cretPw" not in err
