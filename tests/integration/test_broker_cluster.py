"""A three-node RabbitMQ cluster loses the node the service is on: notices and replies go on, none is lost.

The service's own pieces (the outbox publisher, the reply consumer) run as the daemon wires them, with the
connection factory the settings give (node 1, then the other nodes); the tenant is a real AMQP client with
its own broker user. Node 1 is killed with SIGKILL, as a crash or a power cut would end it, while it holds
the leaders of the quorum queues in use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml
from structlog.testing import capture_logs

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.incident.notices import TenantNotifier
from evacuator.lab.hosts import LabHost
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm
from notifiers.connection import ConnectionFactory, blocking_connection_factory
from notifiers.delivery import OutboxPublisher
from notifiers.errors import BrokerUnavailable
from notifiers.messages import EvacuationFailed, EvacuationScheduled, Notice, VmEvacuated
from notifiers.outbox import Outbox
from notifiers.publisher import NoticePublisher
from notifiers.reply_acceptance import TenantReply
from notifiers.reply_consumer import ReplyConsumer
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import Topology, host_replies_queue, tenant_queue
from tests.fixtures.broker import LabTenant, next_notice_of
from tests.fixtures.daemon import Daemons, write_config
from tests.fixtures.rabbit_cluster import RabbitCluster

pytestmark = pytest.mark.integration

VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
BEFORE, AFTER = 20, 20  # notices published before and after the kill


class RecordedFactory:
    """The daemon's connection factory, noting when each connection opened and on which node's port."""

    def __init__(self, connect: ConnectionFactory) -> None:
        self._connect = connect
        self.opened: list[tuple[float, int]] = []
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        connection = self._connect()
        with self._lock:
            self.opened.append((time.monotonic(), int(connection._impl.params.port)))
        return connection

    def first_after(self, moment: float) -> tuple[float, int] | None:
        with self._lock:
            return next(((at, port) for at, port in self.opened if at > moment), None)


def wait_for(condition: Any, seconds: float, what: str) -> float:
    """time.monotonic() once `condition()` holds; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.01)
    return time.monotonic()


def report(request: pytest.FixtureRequest, **measured: float) -> None:
    for name, value in measured.items():
        request.node.user_properties.append((name, round(value, 3)))
        print(f"{name}: {value:.3f}")


class Service:
    """The daemon's broker side for one host: outbox publisher, tenant notifier, reply consumer."""

    def __init__(self, settings: BrokerSettings, state: Path, host: str) -> None:
        self.host = host
        self.publisher_connections = RecordedFactory(
            blocking_connection_factory(settings, connection_name=f"evacuator-notices-{host}"))
        self.reply_connections = RecordedFactory(
            blocking_connection_factory(settings, connection_name=f"evacuator-replies-{host}"))
        self.outbox = OutboxPublisher(
            NoticePublisher(settings, connect=self.publisher_connections), Outbox(state / "outbox.sqlite"),
            confirm_timeout_seconds=5, reconnect_initial_seconds=settings.reconnect_initial_seconds,
            reconnect_max_seconds=settings.reconnect_max_seconds,
        )  # fmt: skip
        self.notifier = TenantNotifier(publisher=self.outbox, host=host,
                                       replies_exchange=settings.replies_exchange,
                                       clock=lambda: datetime.now(UTC))  # fmt: skip
        self.replies: list[tuple[float, TenantReply]] = []
        self.consumer = ReplyConsumer(settings, host=host, connect=self.reply_connections,
                                      on_reply=lambda reply: self.replies.append((time.monotonic(), reply)))

    def start(self) -> None:
        self.outbox.start(timeout_seconds=10)
        self.consumer.start(timeout_seconds=10)

    def close(self) -> None:
        self.consumer.close()
        self.outbox.close()

    def notify(self, tenant: str, index: int) -> Any:
        return self.notifier.evacuation_failed(tenant=tenant, vm_uuid=VM, vm_name=f"vm-{index:03}",
                                               reason="test")  # fmt: skip


@pytest.fixture
def service(whole_cluster: RabbitCluster, tmp_path: Path) -> Iterator[Service]:
    settings = whole_cluster.settings(reconnect_initial_seconds=0.2, reconnect_max_seconds=1.0)
    service = Service(settings, tmp_path, host=f"hv-{whole_cluster.token}")
    service.start()
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def tenant(whole_cluster: RabbitCluster) -> Iterator[LabTenant]:
    """A tenant whose client talks to node 3, which stays up."""
    made = whole_cluster.tenant("acme", node=3)
    yield made
    whole_cluster.remove_tenant(made)


def test_notices_and_replies_go_on_when_the_node_holding_the_queues_dies(
    whole_cluster: RabbitCluster, service: Service, tenant: LabTenant, request: pytest.FixtureRequest
) -> None:
    node_1 = whole_cluster.lab.node(1)
    settings = whole_cluster.settings()
    assert [port for _, port in service.publisher_connections.opened] == [node_1.amqp_port]
    assert [port for _, port in service.reply_connections.opened] == [node_1.amqp_port]
    service.outbox.ensure_tenant_queue(tenant.name).result(timeout=10)
    published = [service.notify(tenant.name, i) for i in range(BEFORE)]
    for future in published:
        future.result(timeout=10)
    replies_queue = host_replies_queue(service.host, replies_exchange=settings.replies_exchange)
    seen = whole_cluster.queues(1)
    for name in (tenant_queue(tenant.name), replies_queue):  # replicated on every node, led from node 1
        assert seen[name]["type"] == "quorum" and seen[name]["leader"] == node_1.name
        assert sorted(seen[name]["members"]) == sorted(n.name for n in whole_cluster.lab.nodes)

    received: list[Notice] = []
    exchange = settings.replies_exchange
    with TenantClient(tenant.url, tenant.name, replies_exchange=exchange) as client, \
            capture_logs() as logs:  # fmt: skip
        received += [_next(client) for _ in range(BEFORE // 2)]  # half read, half still queued at the kill
        died = whole_cluster.lab.kill(1)
        after = [service.notify(tenant.name, BEFORE + i) for i in range(AFTER)]
        for future in after:
            future.result(timeout=60)
        notices_confirmed = time.monotonic()
        replies_back = wait_for(lambda: service.reply_connections.first_after(died) is not None, 30,
                                "the reply consumer on another node")  # fmt: skip
        reply_sent = time.monotonic()
        attempts = _confirmed(lambda: client.send_postpone(service.host, VM, 60))
        wait_for(lambda: len(service.replies) >= 1, 30, "the reply sent after the kill")
        while len({n.event_id for n in received}) < BEFORE + AFTER:  # a duplicate may come on top
            received.append(_next(client))
        while (extra := client.next_notice(1.0)) is not None:
            received.append(extra)
        # Node 1 is still down: the next connection goes straight to the node that answered last.
        failovers = [e for e in logs if e["event"] == "broker_failover"]
        service.publisher_connections().close()
        assert [e for e in logs if e["event"] == "broker_failover"] == failovers

    # Every notice came, in order; a notice sent twice (a confirm lost with the node) keeps its event id.
    firsts: dict[str, EvacuationFailed] = {}
    for notice in received:
        assert isinstance(notice, EvacuationFailed)
        earlier = firsts.setdefault(notice.event_id, notice)
        assert (earlier.vm_name, earlier.incarnation) == (notice.vm_name, notice.incarnation), notice
    assert [n.vm_name for n in firsts.values()] == [f"vm-{i:03}" for i in range(BEFORE + AFTER)]
    incarnations = [n.incarnation for n in firsts.values()]
    assert incarnations == sorted(incarnations)

    # The reply reached the consumer, now on another node, as the tenant's.
    at, reply = service.replies[0]
    assert (reply.tenant, reply.reply.vm_uuid) == (tenant.name, VM)
    publisher_back = service.publisher_connections.first_after(died)
    consumer_back = service.reply_connections.first_after(died)
    assert publisher_back is not None and consumer_back is not None
    assert node_1.amqp_port not in (publisher_back[1], consumer_back[1])
    assert any(e["event"] == "broker_failover" for e in logs), "the factory said it skipped node 1"
    report(
        request,
        consumer_reconnected_after_death_seconds=consumer_back[0] - died,
        publisher_reconnected_after_death_seconds=publisher_back[0] - died,
        all_notices_after_death_confirmed_seconds=notices_confirmed - died,
        reply_after_death_handled_seconds=at - died,
        reply_sending_to_handled_seconds=at - reply_sent,
        consumer_back_before_reply_seconds=reply_sent - replies_back,
        reply_attempts=attempts,
        duplicates=len(received) - len(firsts),
    )


def test_a_service_that_connects_as_the_queue_leader_dies_goes_on(
    whole_cluster: RabbitCluster, tmp_path: Path, tenant: LabTenant, request: pytest.FixtureRequest
) -> None:
    # A channel opened while a quorum queue's leader is being replaced is nacked for as long as it lives
    # (seen on RabbitMQ 3.10, for a minute and more): the publisher must take another channel to go on.
    lab = whole_cluster.lab
    settings = whole_cluster.settings()
    _declare_tenant_queue_via(whole_cluster, settings, tenant.name, node=1)
    host = f"hv2-{whole_cluster.token}"
    _declare_replies_queue_via(whole_cluster, settings, host, node=1)
    on_node_2 = whole_cluster.settings(url=lab.urls[1],
                                       failover_urls=[lab.urls[2].replace("guest:guest@", "guest@")],
                                       reconnect_initial_seconds=0.1, reconnect_max_seconds=0.5)  # fmt: skip
    service = Service(on_node_2, tmp_path, host=host)
    try:
        with capture_logs() as logs:
            died = lab.kill(1)
            service.outbox.start(timeout_seconds=10)  # the publisher's first channel opens now
            futures = [service.notify(tenant.name, i) for i in range(5)]
            service.consumer.start(timeout_seconds=10)
        for future in futures:
            future.result(timeout=30)
        confirmed = time.monotonic()
        nacked = len([e for e in logs if e["event"] == "notice_nacked"])  # most runs; how many is timing
        with TenantClient(tenant.url, tenant.name, replies_exchange=settings.replies_exchange) as client:
            names = [_next_failed(client).vm_name for _ in range(5)]
            _confirmed(lambda: client.send_postpone(host, VM, 60))
        handled = wait_for(lambda: len(service.replies) >= 1, 30, "the reply")
        assert [p for _, p in service.publisher_connections.opened] == [lab.node(2).amqp_port]
    finally:
        service.close()
    assert names == [f"vm-{i:03}" for i in range(5)]
    report(request, new_service_notices_confirmed_after_leader_death_seconds=confirmed - died,
           new_service_reply_handled_after_leader_death_seconds=handled - died, new_service_nacks=nacked)


def test_a_classic_notices_queue_of_an_older_deployment_is_used_as_it_is_with_a_warning(
    whole_cluster: RabbitCluster, tmp_path: Path, tenant: LabTenant
) -> None:
    classic = whole_cluster.settings(queue_type="classic")
    _declare_tenant_queue_via(whole_cluster, classic, tenant.name, node=1)
    service = Service(whole_cluster.settings(), tmp_path, host=f"hv3-{whole_cluster.token}")
    with capture_logs() as logs:
        service.start()
        try:
            service.outbox.ensure_tenant_queue(tenant.name).result(timeout=10)
            service.notify(tenant.name, 0).result(timeout=10)
        finally:
            service.close()
    warnings = [e for e in logs if e["event"] == "tenant_queue_inequivalent"]  # at each declaration
    assert warnings and all(w["tenant"] == tenant.name and w["wanted"] == "quorum" for w in warnings)
    assert "x-queue-type" in warnings[0]["detail"]
    assert whole_cluster.queues(1)[tenant_queue(tenant.name)]["type"] == "classic"
    with TenantClient(tenant.url, tenant.name) as client:
        assert _next_failed(client).vm_name == "vm-000"


WINDOW_SECONDS = 15  # the second VM's window: no answer, it moves when this runs out


def test_the_daemon_evacuates_through_the_loss_of_its_broker_node(
    whole_cluster: RabbitCluster, tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], daemon: Daemons,
    tenant: LabTenant, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    # All real: the daemon (`evacuator run`) on host-a, connected to node 1, which leads its queues; a sensor
    # heats up, the tenant is told, node 1 dies; the tenant's ready (sent after) and the window of the other
    # VM still move both VMs to host-b, and the tenant hears of each.
    host_a, host_b = clean_lab_hosts
    vms = (("web", 600, "52:54:00:e2:c1:01"), ("db", WINDOW_SECONDS, "52:54:00:e2:c1:02"))
    uuids = {name: create_vm(host_a.uri, host_a.pool, name=name, tenant=tenant.name,
                             window_seconds=window, disk_bytes=4 << 20, data=name.encode() * 1000, mac=mac)
             for name, window, mac in vms}  # fmt: skip
    settings = whole_cluster.settings()
    sensor = HeatableHwmon(tmp_path / "sys", celsius=45)
    config = write_config(tmp_path, host_a, host_b, settings, tmp_path / "sys")
    written = yaml.safe_load(config.read_text(encoding="utf-8"))
    written["broker"].update(failover_urls=[u.get_secret_value() for u in settings.failover_urls],
                             reconnect_initial_seconds=0.2, reconnect_max_seconds=2)  # fmt: skip
    config.write_text(yaml.safe_dump(written), encoding="utf-8")
    log = daemon(config)

    exchange = settings.replies_exchange
    with TenantClient(tenant.url, tenant.name, replies_exchange=exchange) as client:
        sensor.set_celsius(97)
        scheduled = next_notice_of(client, EvacuationScheduled, 30)
        leaders = whole_cluster.queues(1)
        assert leaders[tenant_queue(tenant.name)]["leader"] == whole_cluster.lab.node(1).name
        died = whole_cluster.lab.kill(1)
        log.wait_for("broker_failover", 30)
        _confirmed(lambda: client.send_ready("host-a", uuids["web"], scheduled.event_id))
        moved = {}
        for _ in uuids:
            notice = next_notice_of(client, VmEvacuated, WINDOW_SECONDS + 90)
            moved[notice.vm_uuid] = notice
    all_moved = time.monotonic()
    assert set(moved) == set(uuids.values()) and all(n.to_host == "host-b" for n in moved.values())
    log.wait_for("reply_received", 1, vm_uuid=uuids["web"])
    with open_libvirt_host("host-b", host_b.uri, host_b.pool) as b:
        for uuid in uuids.values():
            on_b = b.find_vm(uuid)
            assert on_b is not None and on_b.state is VmState.RUNNING
    lost = log.matching("broker_connection_lost")
    assert lost, "the daemon saw its node go"
    report(request, e2e_node_death_to_both_vms_evacuated_and_told_seconds=all_moved - died)
    assert daemon.stop(log) == 0


def _declare_tenant_queue_via(
    cluster: RabbitCluster, settings: BrokerSettings, tenant: str, *, node: int
) -> None:
    """The tenant's queue declared (and so led) from node `node`, as a daemon connected there would."""
    url = cluster.lab.node(node).url
    publisher = NoticePublisher(settings, connect=lambda: pika.BlockingConnection(pika.URLParameters(url)))
    publisher.start(timeout_seconds=10)
    try:
        publisher.ensure_tenant_queue(tenant).result(timeout=10)
    finally:
        publisher.close()


def _declare_replies_queue_via(
    cluster: RabbitCluster, settings: BrokerSettings, host: str, *, node: int
) -> None:
    url = cluster.lab.node(node).url
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        Topology.from_settings(settings).declare_exchanges(channel := connection.channel())
        Topology.from_settings(settings).declare_host_replies_queue(channel, host)
    finally:
        connection.close()


def _confirmed(send: Callable[[], object]) -> int:
    """Send a reply as the contract asks of a tenant: confirmed by the broker, else sent again (the client
    takes a new connection). Just after a node's loss the broker nacks what a channel opened then publishes
    to a quorum queue (RabbitMQ 3.10, docs/broker-cluster.md). Returns the attempts it took."""
    for attempt in range(1, 11):
        try:
            send()
        except BrokerUnavailable:
            time.sleep(0.2)
            continue
        return attempt
    raise AssertionError("the broker confirmed no reply in 10 attempts")


def test_a_tenant_given_every_node_reads_on_when_its_node_dies(
    whole_cluster: RabbitCluster, service: Service, request: pytest.FixtureRequest
) -> None:
    """The tenant's client talks to node 1 and knows nodes 2 and 3 (failover_urls, no password of their
    own): node 1 dies while notices are queued; the read under way fails (BrokerUnavailable), the next one
    reconnects to another node and every notice arrives, with its event id."""
    made = whole_cluster.tenant("nomad", node=1)
    try:
        others = [node.url.replace("guest:guest@", f"{made.name}@") for node in whole_cluster.lab.nodes[1:]]
        service.outbox.ensure_tenant_queue(made.name).result(timeout=10)
        for future in [service.notify(made.name, i) for i in range(BEFORE)]:
            future.result(timeout=10)
        exchange = whole_cluster.settings().replies_exchange
        with TenantClient(made.url, made.name, replies_exchange=exchange, failover_urls=others) as client:
            received = [_next(client).event_id for _ in range(BEFORE // 2)]
            died = whole_cluster.lab.kill(1)
            lost = 0
            while len(set(received)) < BEFORE:
                try:
                    notice = client.next_notice(30.0)
                except BrokerUnavailable:
                    lost += 1  # the connection to node 1 went with it: the next read reconnects
                    assert lost <= 3, "the client did not reach another node"
                    continue
                assert notice is not None, "a notice did not arrive within 30 s"
                received.append(notice.event_id)
            back = time.monotonic() - died
        report(request, tenant_node_death_to_all_notices_read_seconds=back)
        assert len(set(received)) == BEFORE
    finally:
        whole_cluster.remove_tenant(made)


def _next(client: TenantClient) -> Notice:
    notice = client.next_notice(30.0)
    assert notice is not None, "a notice did not arrive within 30 s"
    return notice


def _next_failed(client: TenantClient) -> EvacuationFailed:
    notice = _next(client)
    assert isinstance(notice, EvacuationFailed), notice
    return notice
