"""A private broker node goes down and comes back: no notice is lost or reordered; amqps verifies the CA."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evacuator.incident.notices import TenantNotifier
from evacuator.lab.tls import make_test_ca
from notifiers.delivery import OutboxPublisher
from notifiers.errors import BrokerUnavailable
from notifiers.messages import EvacuationFailed, Notice
from notifiers.outbox import Outbox
from notifiers.publisher import NoticePublisher
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from tests.fixtures.broker import LabTenant, PrivateBroker

pytestmark = pytest.mark.integration

VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
NOTICES = 100


@pytest.fixture
def outbox_publisher(private_broker: PrivateBroker, tmp_path: Path) -> Iterator[OutboxPublisher]:
    settings = BrokerSettings.model_validate({"url": private_broker.broker.url, "confirm_timeout_seconds": 3})
    publisher = OutboxPublisher(
        NoticePublisher(settings), Outbox(tmp_path / "outbox.sqlite"),
        confirm_timeout_seconds=3, reconnect_initial_seconds=0.2, reconnect_max_seconds=1.0,
    )  # fmt: skip
    publisher.start(timeout_seconds=10)
    yield publisher
    publisher.close()


def failed(tenant: str, index: int) -> EvacuationFailed:
    return EvacuationFailed(
        tenant=tenant, host="hv1", vm_uuid=VM, vm_name=f"vm-{index:03}", reason="test", at=datetime.now(UTC)
    )


def drain(tenant: LabTenant, count: int, *, ca_file: Path | None = None) -> list[Notice]:
    received: list[Notice] = []
    with TenantClient(tenant.url, tenant.name, ca_file=ca_file) as client:
        while len(received) < count:
            notice = client.next_notice(10.0)
            assert notice is not None, f"only {len(received)} of {count} notices arrived"
            received.append(notice)
        assert client.next_notice(0.3) is None, "more notices than were sent"
    return received


def test_notices_due_while_the_broker_is_down_all_arrive_in_order(
    private_broker: PrivateBroker, outbox_publisher: OutboxPublisher, request: pytest.FixtureRequest
) -> None:
    tenant = private_broker.tenant("acme")
    outbox_publisher.ensure_tenant_queue(tenant.name).result(timeout=10)
    private_broker.stop()
    stopped_at = time.monotonic()
    try:
        # Through the service's Notifier seam, as the daemon sends them (wiring puts the outbox behind it).
        notifier = TenantNotifier(
            publisher=outbox_publisher, host="hv1", replies_exchange="evacuator.replies",
            clock=lambda: datetime.now(UTC),
        )
        started = time.perf_counter()
        futures = [
            notifier.evacuation_failed(tenant=tenant.name, vm_uuid=VM, vm_name=f"vm-{i:03}", reason="no disk")
            for i in range(NOTICES)
        ]
        store_ms = (time.perf_counter() - started) * 1000
        # The service keeps working: every publish returned at once and the notices wait on disk.
        assert outbox_publisher.backlog() == NOTICES
        time.sleep(1.5)  # several delivery attempts fail meanwhile
        assert outbox_publisher.backlog() == NOTICES and not any(f.done() for f in futures)
    finally:
        private_broker.resume()
    resumed_at = time.monotonic()
    for future in futures:
        future.result(timeout=60)
    delivered_at = time.monotonic()
    assert outbox_publisher.backlog() == 0

    received = drain(tenant, NOTICES)
    names = [n.vm_name for n in received]  # type: ignore[union-attr]
    assert names == [f"vm-{i:03}" for i in range(NOTICES)], "all arrive, in order, once"
    assert len({n.event_id for n in received}) == NOTICES
    incarnations = [n.incarnation for n in received]
    assert incarnations == sorted(incarnations) and len(set(incarnations)) == NOTICES
    for name, value in (
        ("store_100_notices_ms", round(store_ms, 1)),
        ("broker_down_seconds", round(resumed_at - stopped_at, 1)),
        ("resume_to_all_confirmed_seconds", round(delivered_at - resumed_at, 2)),
    ):
        request.node.user_properties.append((name, value))
        print(f"{name}: {value}")


def test_amqps_verifies_the_broker_certificate_against_the_ca(
    private_broker: PrivateBroker, tmp_path: Path
) -> None:
    tls_url = private_broker.broker.tls_url
    assert tls_url is not None
    trusted = BrokerSettings.model_validate({"url": tls_url, "ca_file": str(private_broker.tls.ca_file)})
    publisher = NoticePublisher(trusted)
    publisher.start(timeout_seconds=10)
    tenant = private_broker.tenant("tls")
    publisher.ensure_tenant_queue(tenant.name).result(timeout=10)
    publisher.publish(tenant.name, "hv1", failed(tenant.name, 0)).result(timeout=10)
    publisher.close()
    tenant_tls_url = tenant.url.replace("amqp://", "amqps://").replace(
        private_broker.broker.url.rsplit(":", 1)[1].split("/")[0], tls_url.rsplit(":", 1)[1].split("/")[0]
    )
    tls_tenant = LabTenant(name=tenant.name, url=tenant_tls_url)
    assert len(drain(tls_tenant, 1, ca_file=private_broker.tls.ca_file)) == 1

    other_ca = make_test_ca(tmp_path / "other", name="impostor")
    for ca_file in (other_ca.ca_file, None):  # another CA, and the system's CAs: both must refuse
        untrusted = BrokerSettings.model_validate(
            {"url": tls_url, "ca_file": None if ca_file is None else str(ca_file)}
        )
        with pytest.raises(BrokerUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            NoticePublisher(untrusted).start(timeout_seconds=10)
