"""The composition root: the only place that builds I/O objects from the settings and connects them."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from evacuator.errors import HypervisorError
from evacuator.hypervisor.libvirt.host import LibvirtHost, open_libvirt_host
from evacuator.hypervisor.libvirt.metadata import libvirt_window_store
from evacuator.hypervisor.model import Hypervisor
from evacuator.incident.notices import AmqpNotifier
from evacuator.incident.planner import WindowPolicy
from evacuator.incident.reply_desk import ReplyDesk
from evacuator.incident.reply_policy import ReplyPolicy
from evacuator.incident.scheduler import ApschedulerTimers
from evacuator.incident.service import Service, ServiceConfig
from evacuator.moves.engine import MoveEngine
from evacuator.moves.journal import Journal
from evacuator.moves.runner import CrashPoint, EngineConfig, OpenHost, no_crash
from evacuator.moves.state import Phase
from evacuator.moves.transfer_slots import ClusterSlots, NoClusterCap
from evacuator.peers.cloud_slots import BrokerCloudCaps
from evacuator.peers.own_host import PeerServices, own_volume_digester, volume_receiver
from evacuator.peers.responder import DigestResponder
from evacuator.peers.rpc import PeerDigestClient
from evacuator.settings import Settings
from evacuator.transfer.sender import DataChannelClient
from monitors.detector import Detector
from monitors.sources import SourcePoller, build_sources, require_working_source
from monitors.verdicts import HostVerdict
from notifiers.connection import blocking_connection_factory
from notifiers.delivery import OutboxPublisher
from notifiers.outbox import Outbox
from notifiers.publisher import NoticePublisher
from notifiers.replies import ReplyConsumer

log = structlog.get_logger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def open_host_for(settings: Settings) -> OpenHost:
    """Each move attempt opens fresh connections to this host and the chosen peer (one thread owns them)."""
    hosts = {p.name: (p.libvirt_uri, p.storage_pool) for p in settings.peers}
    hosts[settings.host.name] = (settings.host.libvirt_uri, settings.host.storage_pool)
    connect = blocking_connection_factory(
        settings.broker, connection_name=f"evacuator-digests-{settings.host.name}")
    peer_digests = PeerDigestClient(
        connect,
        exchange=settings.broker.peers_exchange,
        timeout_base_seconds=settings.evacuation.copy_timeout_base_seconds,
        min_bytes_per_second=settings.evacuation.copy_min_bytes_per_second,
    )
    channel = settings.data_channel
    sender = DataChannelClient(
        peer_digests, encryption=channel.encryption,
        stall_timeout_seconds=channel.stall_timeout_seconds,
        min_bytes_per_second=settings.evacuation.copy_min_bytes_per_second,
    ) if channel.enabled else None

    @contextmanager
    def open_host(name: str) -> Iterator[Hypervisor]:
        if name not in hosts:
            raise HypervisorError(f"host {name} is neither this host nor a configured peer")
        uri, pool = hosts[name]
        # This host's disks are files this process may read itself; a peer's are digested by the peer's own
        # daemon when it answers, else read through libvirt.
        local = name == settings.host.name
        with open_libvirt_host(name, uri, pool, local_files=local,
                               peer_digests=None if local else peer_digests,
                               volume_sender=None if local else sender) as host:
            yield host

    return open_host


CRASH_AT_ENV = "EVACUATOR_CRASH_AT"


def crash_point_from_env(environ: Mapping[str, str]) -> CrashPoint:
    """Test-only: `EVACUATOR_CRASH_AT=<step>:<phase>` kills the process with SIGKILL right after the journal
    records that step and phase (the crash tests restart it and check nothing was lost)."""
    wanted = environ.get(CRASH_AT_ENV)
    if not wanted:
        return no_crash
    log.warning("crash_point_armed", crash_at=wanted)

    def crash(step: str, phase: Phase) -> None:
        if f"{step}:{phase}" == wanted:
            os.kill(os.getpid(), signal.SIGKILL)

    return crash


def build_engine(settings: Settings, hypervisor: Hypervisor, *, clock: Callable[[], datetime]) -> MoveEngine:
    evacuation = settings.evacuation
    return MoveEngine(
        config=EngineConfig(
            host=settings.host.name,
            peers=tuple(p.name for p in settings.peers),
            shutdown_timeout_seconds=evacuation.shutdown_timeout_seconds,
            move_attempts=evacuation.move_attempts,
            retry_initial_seconds=evacuation.retry_initial_seconds,
            retry_max_seconds=evacuation.retry_max_seconds,
            copy_timeout_base_seconds=evacuation.copy_timeout_base_seconds,
            copy_min_bytes_per_second=evacuation.copy_min_bytes_per_second,
            max_outgoing_moves=evacuation.max_outgoing_moves,
            max_incoming_moves_per_peer=evacuation.max_incoming_moves_per_peer,
            quiesce_ahead_moves=evacuation.quiesce_ahead_moves,
            precopy_during_shutdown=evacuation.precopy_during_shutdown,
        ),
        journal=Journal(settings.state_dir / "journal.sqlite"),
        hypervisor=hypervisor,
        open_host=open_host_for(settings),
        clock=clock,
        sleep=time.sleep,
        crash_point=crash_point_from_env(os.environ),
        cluster_slots=cluster_slots_for(settings),
    )


def cluster_slots_for(settings: Settings) -> ClusterSlots:
    evacuation = settings.evacuation
    incoming = evacuation.cloud_wide_incoming_cap
    if evacuation.max_total_transfers is None and incoming is None:
        return NoClusterCap()
    connect = blocking_connection_factory(
        settings.broker, connection_name=f"evacuator-transfer-slot-{settings.host.name}")
    return BrokerCloudCaps(connect, prefix=settings.broker.peers_exchange,
                           total=evacuation.max_total_transfers, incoming_per_host=incoming)


@dataclass(slots=True, kw_only=True)
class Runtime:
    """Everything the daemon runs, built and connected; start() and stop() in that order, once."""

    settings: Settings
    service: Service
    detector: Detector
    poller: SourcePoller
    hypervisor: LibvirtHost
    publisher: OutboxPublisher
    consumer: ReplyConsumer
    peers: PeerServices
    clock: Callable[[], datetime]

    def start(self) -> None:
        # A daemon that can read no sensor at all would report "unknown" forever: refuse to start instead,
        # so systemd shows the failure (a host without some sources is fine while any one works).
        require_working_source(self.poller.poll())
        self.publisher.start()
        # Tenants may subscribe before the first notice: their queues exist as soon as the service runs.
        tenants = sorted({vm.facts.tenant for vm in self.hypervisor.list_vms() if vm.facts.tenant})
        for tenant in tenants:
            self.publisher.ensure_tenant_queue(tenant).result(timeout=30)
        self.service.start()
        self.consumer.start()
        self.peers.start()

    def stop(self) -> None:
        self.peers.close()
        self.consumer.close()
        self.service.stop()
        self.publisher.close()
        self.hypervisor.close()

    def poll_once(self) -> HostVerdict:
        snapshot = self.poller.poll()
        verdict = self.detector.observe(snapshot, self.clock())
        self.service.on_verdict(verdict)
        return verdict

    def poll_until(self, stop: threading.Event) -> None:
        interval = self.settings.monitors.poll_interval_seconds
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception as exc:  # one failed poll must not stop the daemon; the next one retries
                log.error("poll_failed", error=str(exc), exc_info=True)
            stop.wait(max(0.0, interval - (time.monotonic() - started)))


def build_runtime(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> Runtime:
    host = settings.host
    hypervisor = open_libvirt_host(host.name, host.libvirt_uri, host.storage_pool)
    broker = settings.broker
    # Notices are stored before they are published, so a broker outage delays them but loses none.
    publisher = OutboxPublisher(
        NoticePublisher(broker, clock=clock), Outbox(settings.state_dir / "outbox.sqlite"),
        confirm_timeout_seconds=broker.confirm_timeout_seconds,
        reconnect_initial_seconds=broker.reconnect_initial_seconds,
        reconnect_max_seconds=broker.reconnect_max_seconds,
    )  # fmt: skip
    evacuation = settings.evacuation
    reply_policy = ReplyPolicy(
        max_postpone_seconds=settings.replies.max_postpone_seconds,
        severe_hard_limit_seconds=settings.replies.severe_hard_limit_seconds,
        max_window_seconds=evacuation.max_window_seconds,
    )
    notifier = AmqpNotifier(
        publisher=publisher, host=host.name, replies_exchange=settings.broker.replies_exchange, clock=clock,
        reply_policy=reply_policy,
    )  # fmt: skip
    timers = ApschedulerTimers(settings.state_dir / "timers.sqlite")
    service = Service(
        config=ServiceConfig(
            host=host.name,
            peers=tuple(p.name for p in settings.peers),
            window_policy=WindowPolicy(
                default_window_seconds=evacuation.default_window_seconds,
                max_window_seconds=evacuation.max_window_seconds,
            ),
        ),
        hypervisor=hypervisor,
        notifier=notifier,
        timers=timers,
        engine=build_engine(settings, hypervisor, clock=clock),
        clock=clock,
    )

    desk = ReplyDesk(
        hypervisor=hypervisor, timers=timers, ledger=notifier.ledger, notifier=notifier,
        expedite=lambda tenant, vm_uuid: service.on_reply(tenant=tenant, vm_uuid=vm_uuid, kind="ready"),
        store_window=libvirt_window_store(host.libvirt_uri), policy=reply_policy, clock=clock,
    )  # fmt: skip
    consumer = ReplyConsumer(
        settings.broker, host=host.name, on_reply=desk.on_reply, on_rejected=desk.on_rejected
    )
    channel = settings.data_channel
    receiver = volume_receiver(
        host.name, host.libvirt_uri, host.storage_pool, channel,
        min_bytes_per_second=evacuation.copy_min_bytes_per_second,
    ) if channel.enabled else None
    return Runtime(
        settings=settings,
        service=service,
        detector=Detector(settings.monitors.to_policy()),
        poller=SourcePoller(build_sources(settings.monitors)),
        hypervisor=hypervisor,
        publisher=publisher,
        consumer=consumer,
        peers=PeerServices(
            digests=DigestResponder(
                blocking_connection_factory(broker, connection_name=f"evacuator-digest-answers-{host.name}"),
                host=host.name, exchange=broker.peers_exchange,
                digest_volume=own_volume_digester(host.name, host.libvirt_uri, host.storage_pool),
                issue_ticket=None if receiver is None else receiver.issue,
            ),
            receiver=receiver,
        ),
        clock=clock,
    )
