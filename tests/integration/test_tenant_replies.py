"""The reply contract end to end, on a real broker and libvirt host: postpone, register, refusals, ready.

The pieces are connected as the composition root connects them (ReplyConsumer -> ReplyDesk -> the VM's
window, the host's libvirt metadata, TenantNotifier -> outbox -> broker); only the windows are a fake: the
FakeWindows in place of the service, which would start a real move when a window closes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pika
import pytest

from evacuator.hypervisor.libvirt.host import LibvirtHost, open_libvirt_host
from evacuator.incident.ledger import IncidentLedger, LedgerVm
from evacuator.incident.notices import TenantNotifier
from evacuator.incident.reply_desk import ReplyDesk
from evacuator.incident.reply_policy import ReplyPolicy
from evacuator.lab.hosts import LabHost
from evacuator.lab.vms import create_vm
from monitors.verdicts import Severity
from notifiers.delivery import OutboxPublisher
from notifiers.messages import EvacuationScheduled, EvacuationUpdated, Notice, ReplyRejected
from notifiers.outbox import Outbox
from notifiers.provisioning import declare_tenant_queue
from notifiers.publisher import NoticePublisher
from notifiers.reply_consumer import ReplyConsumer
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import host_replies_queue, reply_routing_key
from notifiers.wire import new_event_id
from tests.fakes.incidents import opened
from tests.fakes.windows import FakeWindows
from tests.fixtures.broker import BrokerJanitor, LabTenant

pytestmark = pytest.mark.integration

POLICY = ReplyPolicy(max_postpone_seconds=1800, severe_hard_limit_seconds=7200, max_window_seconds=3600)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Service:
    host: str
    vm_uuid: str
    windows: FakeWindows
    hypervisor: LibvirtHost
    notifier: TenantNotifier
    deadline: datetime
    ledger: IncidentLedger


@pytest.fixture
def service(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
    broker_janitor: BrokerJanitor, make_tenant: Callable[[str], LabTenant],
) -> Iterator[tuple[Service, LabTenant]]:  # fmt: skip
    lab, acme = clean_lab_hosts[0], make_tenant("rep")
    host = f"hv-{secrets.token_hex(3)}"  # routing name only, so no other test's consumer shares the queue
    broker_janitor.queue(host_replies_queue(host, replies_exchange=broker_settings.replies_exchange))
    vm_uuid = create_vm(lab.uri, lab.pool, name="rep", tenant=acme.name, window_seconds=600,
                        disk_bytes=1 << 20, data=b"x", mac="52:54:00:e2:e0:0a")  # fmt: skip
    hypervisor = open_libvirt_host(lab.name, lab.uri, lab.pool)
    publisher = OutboxPublisher(NoticePublisher(broker_settings), Outbox(tmp_path / "outbox.sqlite"),
                                confirm_timeout_seconds=5)  # fmt: skip
    publisher.start(timeout_seconds=10)
    # The incident, as the service opens it: the ledger first, then the window (its timer), then the notice.
    deadline = utc_now().replace(microsecond=0) + timedelta(minutes=10)
    vm = LedgerVm(vm_uuid=vm_uuid, vm_name="rep", tenant=acme.name, deadline=deadline,
                  latest_deadline=deadline + timedelta(seconds=POLICY.max_postpone_seconds))
    ledger = opened([vm], {acme.name: new_event_id()}, severity=Severity.SEVERE, opened_at=utc_now(),
                    ledger=IncidentLedger(tmp_path / "incident.sqlite"))
    notifier = TenantNotifier(publisher=publisher, host=host,
                              replies_exchange=broker_settings.replies_exchange, clock=utc_now,
                              events=ledger, answers_replies=True)  # fmt: skip
    windows = FakeWindows()
    desk = ReplyDesk(
        hypervisor=hypervisor, windows=windows, ledger=ledger, notifier=notifier,
        window_store=hypervisor, policy=POLICY, clock=utc_now,
    )  # fmt: skip
    consumer = ReplyConsumer(broker_settings, host=host, on_reply=desk.on_reply, on_rejected=desk.on_rejected)
    consumer.start(timeout_seconds=10)
    windows.open(vm_uuid, deadline)
    incident = ledger.open_incident()
    assert incident is not None
    told = notifier.evacuation_scheduled(tenant=acme.name, event_id=ledger.event_for(acme.name) or "",
                                         incident=incident, vms=ledger.records(incident.incident_id))
    told.result(timeout=10)
    try:
        yield Service(host, vm_uuid, windows, hypervisor, notifier, deadline, ledger), acme
    finally:
        consumer.close()
        publisher.close()
        hypervisor.close()
        ledger.close()


def next_of(client: TenantClient, kind: type[Any]) -> Any:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        notice: Notice | None = client.next_notice(1.0)
        if isinstance(notice, kind):
            return notice
    raise AssertionError(f"no {kind.__name__} within 10 s")


def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition not met in 10 s"
        time.sleep(0.05)


def test_postpone_register_refusals_and_ready_over_the_real_broker(
    service: tuple[Service, LabTenant],
    make_tenant: Callable[[str], LabTenant],
    broker_settings: BrokerSettings,
) -> None:
    svc, acme = service
    exchange = broker_settings.replies_exchange
    with TenantClient(acme.url, acme.name, replies_exchange=exchange) as tenant:
        scheduled: EvacuationScheduled = next_of(tenant, EvacuationScheduled)
        assert scheduled.allowed_replies == ("ready", "postpone", "register")
        assert scheduled.vms[0].latest_deadline == svc.deadline + timedelta(seconds=1800)

        tenant.send_postpone(svc.host, svc.vm_uuid, 300, scheduled.event_id)
        updated: EvacuationUpdated = next_of(tenant, EvacuationUpdated)
        assert updated.cause == "postponed" and updated.scheduled_event_id == scheduled.event_id
        assert updated.vms[0].deadline == svc.deadline + timedelta(seconds=300)
        assert updated.vms[0].latest_deadline == scheduled.vms[0].latest_deadline, "null: no postpone"
        assert svc.windows.deadlines == {svc.vm_uuid: svc.deadline + timedelta(seconds=300)}

        tenant.send_postpone(svc.host, svc.vm_uuid, 99_999)  # beyond the cap: cut to the latest deadline
        assert next_of(tenant, EvacuationUpdated).vms[0].deadline == scheduled.vms[0].latest_deadline

        tenant.send_register(svc.host, svc.vm_uuid, 86_400)  # capped by the admin's maximum, kept by libvirt
        eventually(lambda: svc.hypervisor.find_vm(svc.vm_uuid).facts.window_seconds == 3600)  # type: ignore[union-attr]

        _publish_raw(acme, exchange, reply_routing_key(acme.name, svc.host), b"{not json", user_id=acme.name)
        malformed: ReplyRejected = next_of(tenant, ReplyRejected)
        assert malformed.code == "malformed_reply" and "not UTF-8 JSON" in malformed.reason

        mallory = make_tenant("rep-x")
        declare_tenant_queue(broker_settings, mallory.name)  # as `evacuator tenant add` does
        with TenantClient(mallory.url, mallory.name, replies_exchange=exchange) as intruder:
            intruder.send_ready(svc.host, svc.vm_uuid)
            refused: ReplyRejected = next_of(intruder, ReplyRejected)
        assert (refused.code, refused.vm_uuid) == ("unknown_vm", svc.vm_uuid)  # another's VM looks unknown
        assert svc.windows.expedited == []

        # Without a user_id: the broker vouches for nobody, but only acme may publish `acme.<host>`.
        _publish_raw(acme, exchange, reply_routing_key(acme.name, svc.host), b"{}", user_id=None)
        anonymous: ReplyRejected = next_of(tenant, ReplyRejected)
        assert anonymous.code == "missing_user_id"

        # A window registered without knowing the host: to every host; this one holds the VM and keeps it.
        register = b'{"schema_version": 1, "type": "register", "vm_uuid": "%s", "window_seconds": 1200}' % (
            svc.vm_uuid.encode())
        _publish_raw(acme, exchange, f"{acme.name}.all", register, user_id=acme.name)
        eventually(lambda: svc.hypervisor.find_vm(svc.vm_uuid).facts.window_seconds == 1200)  # type: ignore[union-attr]

        tenant.send_ready(svc.host, svc.vm_uuid, scheduled.event_id)
        eventually(lambda: svc.windows.expedited == [svc.vm_uuid])
        expedited: EvacuationUpdated = next_of(tenant, EvacuationUpdated)
        assert expedited.cause == "expedited" and expedited.scheduled_event_id == scheduled.event_id
        assert expedited.vms[0].latest_deadline == scheduled.vms[0].latest_deadline
        tenant.send_ready(svc.host, svc.vm_uuid, scheduled.event_id)  # nothing is pending any more
        assert next_of(tenant, ReplyRejected).code == "no_pending_evacuation"


def _publish_raw(
    tenant: LabTenant, exchange: str, routing_key: str, body: bytes, user_id: str | None
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(tenant.url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(exchange, routing_key, body, pika.BasicProperties(user_id=user_id), mandatory=True)
    connection.close()
