"""The composition root: the only place that builds I/O objects from the settings and connects them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from evacuator.libvirt_host import LibvirtHost, open_libvirt_host
from evacuator.migrator import ColdMigrator, MoveReport, StepEvent
from evacuator.notices import AmqpNotifier
from evacuator.planner import WindowPolicy
from evacuator.service import Service, ServiceConfig
from evacuator.settings import PeerSettings, Settings
from evacuator.timers import ApschedulerTimers
from monitors.detector import Detector
from monitors.sources import SourcePoller, build_sources, require_working_source
from monitors.verdicts import HostVerdict
from notifiers.publisher import NoticePublisher
from notifiers.replies import RejectedDelivery, ReplyConsumer, TenantReply

log = structlog.get_logger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _ignore_step(event: StepEvent) -> None:
    """The migrator logs every step itself; the hook is for callers that show a timeline."""


class LibvirtMover:
    """Opens fresh connections to the source and the chosen peer for each move (one thread owns them)."""

    def __init__(self, settings: Settings, *, on_step: Callable[[StepEvent], None] = _ignore_step) -> None:
        self._settings = settings
        self._peers = {p.name: p for p in settings.peers}
        self._on_step = on_step

    def _open_peer(self, peer: PeerSettings) -> LibvirtHost:
        return open_libvirt_host(peer.name, peer.libvirt_uri, peer.storage_pool)

    def move(self, vm_uuid: str, destination: str) -> MoveReport:
        host = self._settings.host
        with (
            open_libvirt_host(host.name, host.libvirt_uri, host.storage_pool) as source,
            self._open_peer(self._peers[destination]) as dest,
        ):
            migrator = ColdMigrator(
                source=source,
                destination=dest,
                clock=utc_now,
                shutdown_timeout_seconds=self._settings.evacuation.shutdown_timeout_seconds,
                sleep=time.sleep,
                on_step=self._on_step,
            )
            return migrator.move(vm_uuid)


@dataclass(slots=True, kw_only=True)
class Runtime:
    """Everything the daemon runs, built and connected; start() and stop() in that order, once."""

    settings: Settings
    service: Service
    detector: Detector
    poller: SourcePoller
    hypervisor: LibvirtHost
    publisher: NoticePublisher
    consumer: ReplyConsumer
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

    def stop(self) -> None:
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
    publisher = NoticePublisher(settings.broker, clock=clock)
    notifier = AmqpNotifier(
        publisher=publisher, host=host.name, replies_exchange=settings.broker.replies_exchange, clock=clock
    )
    evacuation = settings.evacuation
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
        timers=ApschedulerTimers(settings.state_dir / "timers.sqlite"),
        mover=LibvirtMover(settings),
        clock=clock,
    )

    def on_reply(reply: TenantReply) -> None:
        refused = service.on_reply(tenant=reply.tenant, vm_uuid=reply.reply.vm_uuid, kind=reply.reply.type)
        if refused is not None:
            log.warning("reply_refused", tenant=reply.tenant, vm_uuid=reply.reply.vm_uuid, reason=refused)

    def on_rejected(rejected: RejectedDelivery) -> None:
        log.warning("reply_rejected", reason=rejected.reason, user_id=rejected.user_id)

    consumer = ReplyConsumer(settings.broker, host=host.name, on_reply=on_reply, on_rejected=on_rejected)
    return Runtime(
        settings=settings,
        service=service,
        detector=Detector(settings.monitors.to_policy()),
        poller=SourcePoller(build_sources(settings.monitors)),
        hypervisor=hypervisor,
        publisher=publisher,
        consumer=consumer,
        clock=clock,
    )
