"""The daemon's runtime: every part built from the settings, then started and stopped in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import structlog

from evacuator.hypervisor.libvirt.host import LibvirtHost, open_libvirt_host
from evacuator.incident.admin import AdminStore
from evacuator.incident.ledger import IncidentLedger
from evacuator.incident.returns import MoveBackOffers
from evacuator.incident.service import Service
from evacuator.incident.status_file import write_status
from evacuator.peers.own_host import PeerServices
from evacuator.settings import Settings
from evacuator.wiring.host_view import HostViewParts, guard_for, host_view_for, room_reader_for
from evacuator.wiring.incident import build_incident
from evacuator.wiring.moves import build_engine, reachable_for
from evacuator.wiring.peers import peer_services
from evacuator.wiring.reload import PolicyHolders
from monitors.detector import Detector
from monitors.sources import SourcePoller, build_sources, require_working_source
from monitors.verdicts import HostVerdict
from notifiers.delivery import OutboxPublisher
from notifiers.reply_consumer import ReplyConsumer

log = structlog.get_logger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


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
    ledger: IncidentLedger
    peers: PeerServices
    host_view: HostViewParts
    admin: AdminStore
    clock: Callable[[], datetime]
    policies: PolicyHolders  # what a reload (SIGHUP) changes
    returns: MoveBackOffers | None = None  # offers VMs back to the hosts they left (with the host view)

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
        if self.admin.maintenance() is not None:  # drained before this start: still in maintenance
            self.host_view.set_maintenance(True)
        self.host_view.start()

    def stop(self) -> None:
        self.host_view.close()
        self.peers.close()
        self.consumer.close()
        self.service.stop()
        self.publisher.close()
        self.ledger.close()
        self.admin.close()
        self.hypervisor.close()

    def poll_once(self) -> HostVerdict:
        snapshot = self.poller.poll()
        verdict = self.detector.observe(snapshot, self.clock())
        self.service.on_verdict(verdict)
        self.host_view.on_verdict(verdict)  # the peers learn of a change at once, not at the next interval
        # What `evacuator status` shows, without the broker.
        write_status(self.settings.state_dir, verdict, awaiting=self.service.awaiting_approval())
        self.take_requests()
        if self.returns is not None:  # in maintenance or not is kept in memory (set_maintenance): no read
            self.returns.check(verdict, maintenance=self.host_view.in_service.maintenance)
        return verdict

    def take_requests(self) -> None:
        """The admin's drain and undrain requests (incident/admin.py), each taken once, oldest first."""
        for request in self.admin.untaken():
            now = self.clock()
            incident_id = None
            if request.action in ("approve", "reject"):
                outcome = self.service.approve() if request.action == "approve" else self.service.reject()
            elif request.action == "drain":
                outcome, incident_id = self.service.drain(reason=request.reason,
                                                          window_seconds=request.window_seconds)  # fmt: skip
                if outcome == "accepted":
                    self.admin.set_maintenance(request.reason, now)
                    self.host_view.set_maintenance(True)
            elif self.service.draining():
                outcome = ("refused: the drain is under way; wait for it to end, or cancel its pending moves "
                           "first (evacuator cancel VM_UUID)")  # fmt: skip
            else:
                self.admin.set_maintenance(None, now)
                self.host_view.set_maintenance(self.settings.placement.maintenance)
                outcome = "accepted"
            self.admin.settle(request, outcome=outcome, now=now, incident_id=incident_id)
            log.info("admin_request_taken", request_id=request.request_id, action=request.action,
                     outcome=outcome, incident_id=incident_id, reason=request.reason)

    def poll_until(self, stop: threading.Event, *, after_each: Callable[[], None] | None = None) -> None:
        """Polls every poll_interval_seconds until `stop`; `after_each` runs after every poll, failed or not
        (the loop is alive: systemd's watchdog is told so)."""
        interval = self.settings.monitors.poll_interval_seconds
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception as exc:  # one failed poll must not stop the daemon; the next one retries
                log.error("poll_failed", error=str(exc), exc_info=True)
            if after_each is not None:
                after_each()
            stop.wait(max(0.0, interval - (time.monotonic() - started)))


def open_own_host(settings: Settings) -> LibvirtHost:
    """This host's libvirt, for the service and the engine (the caller closes it)."""
    host = settings.host
    return open_libvirt_host(host.name, host.libvirt_uri, host.storage_pool)


def admin_store_for(settings: Settings) -> AdminStore:
    """The admin's requests to the daemon and the maintenance flag (`evacuator drain`, `undrain`)."""
    return AdminStore(settings.state_dir / "admin.sqlite")


def returns_for(settings: Settings, hypervisor: LibvirtHost, host_view: HostViewParts, service: Service, *,
                clock: Callable[[], datetime]) -> MoveBackOffers | None:  # fmt: skip
    """This host's offers of VMs back to the hosts they left (any host may ask: its own setting decides);
    none without the host view, where hosts ask."""
    if not settings.placement.use_host_view:
        return None
    return MoveBackOffers(host=settings.host.name, hypervisor=hypervisor, view=host_view.view, desk=service,
                          reachable=reachable_for(settings, host_view.view),
                          stale_after_seconds=settings.host_view.stale_after, clock=clock)  # fmt: skip


def build_runtime(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> Runtime:
    hypervisor = open_own_host(settings)
    # One read-only reader of this host's room: for the state it publishes and the claims it answers alike.
    room = room_reader_for(settings)
    host_view = replace(host_view_for(settings, clock=clock, room=room), close_room=room.close)
    # The blast-radius guards need the host view: they count the cloud's hosts and who evacuates.
    guard = guard_for(settings, host_view, clock=clock) if settings.placement.use_host_view else None
    engine = build_engine(settings, hypervisor, clock=clock, view=host_view.view, gate=guard)
    incident = build_incident(settings, hypervisor, engine, clock=clock, guard=guard)
    detector = Detector(settings.monitors.to_policy())
    return Runtime(
        settings=settings,
        service=incident.service,
        detector=detector,
        poller=SourcePoller(build_sources(settings.monitors)),
        hypervisor=hypervisor,
        publisher=incident.publisher,
        consumer=incident.consumer,
        ledger=incident.ledger,
        peers=peer_services(settings, room=room),
        host_view=host_view,
        admin=admin_store_for(settings),
        clock=clock,
        returns=returns_for(settings, hypervisor, host_view, incident.service, clock=clock),
        policies=PolicyHolders(detector=detector, service=incident.service, desk=incident.desk, guard=guard),
    )
