"""Wiring of the host view: this host's state publisher (its room read from its own libvirt, its health from
the daemon's verdicts) and the subscriber that keeps every host's latest state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

import structlog

from evacuator.hypervisor.libvirt.room import LibvirtRoomReader
from evacuator.hypervisor.room import RoomCaps, RoomReader
from evacuator.moves.guard import CloudGuard
from evacuator.peers.guard_broker import BrokerGuardState
from evacuator.peers.host_view import HostStateSubscriber, HostView
from evacuator.peers.messages import PeerTrust
from evacuator.peers.state_publisher import HostStatePublisher, HostStatus, Switches
from evacuator.placement.guards import GuardPolicy
from evacuator.placement.model import Verdict
from evacuator.placement.returns import InService
from evacuator.settings import HostViewSettings, PlacementSettings, Settings
from evacuator.wiring.peers import peer_trust, peers_connection
from monitors.verdicts import HostVerdict, Severity
from notifiers.settings import BrokerSettings

log = structlog.get_logger(__name__)


def status_of(verdict: HostVerdict, in_service_since: datetime | None = None) -> HostStatus:
    """What the host's state says of its health: the verdict and its reasons; a moderate host is
    quarantined (DESIGN: moderate places no new VMs here); since when it is in service (healthy past the
    detector's hold-down, not drained)."""
    return HostStatus(verdict=Verdict(verdict.severity.value),
                      reasons=tuple(reason.message for reason in verdict.reasons),
                      quarantined=verdict.severity is Severity.MODERATE,
                      in_service_since=in_service_since)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class HostViewParts:
    """This daemon's half of the host view: what it publishes and what it hears."""

    publisher: HostStatePublisher
    subscriber: HostStateSubscriber
    close_room: Callable[[], None] | None = None  # the room reader's connection, when built here
    in_service: InService = field(default_factory=InService)  # since when this host is in service

    @property
    def view(self) -> HostView:
        return self.subscriber.view

    def start(self) -> None:
        self.subscriber.start()  # first: this host's own first state is in its view too
        self.publisher.start()

    def close(self) -> None:
        self.publisher.close()
        self.subscriber.close()
        if self.close_room is not None:
            self.close_room()

    def on_verdict(self, verdict: HostVerdict) -> None:
        before = self.in_service.since
        since = self.in_service.observe(Verdict(verdict.severity.value), verdict.at)
        if since is not None and before is None:
            log.info("host_in_service", since=since.isoformat())
        self.publisher.set_status(status_of(verdict, since))

    def set_maintenance(self, maintenance: bool) -> None:
        """In maintenance (drained) or back in service: published at once; in service from the next poll."""
        self.in_service.set_maintenance(maintenance)
        self.publisher.set_maintenance(maintenance)


def build_host_view(
    *, host: str, broker: BrokerSettings, trust: PeerTrust, room: RoomReader, view_settings: HostViewSettings,
    switches: Switches, clock: Callable[[], datetime],
) -> HostViewParts:
    """The publisher and subscriber of host `host`, each on its own connection to the peers vhost."""
    view = HostView(stale_after_seconds=view_settings.stale_after)
    return HostViewParts(
        publisher=HostStatePublisher(
            peers_connection(broker, f"evacuator-host-state-{host}"), own_user=trust.own_user, host=host,
            exchange=broker.peers_exchange, room=room, interval_seconds=view_settings.interval_seconds,
            switches=switches, clock=clock,
        ),
        subscriber=HostStateSubscriber(
            peers_connection(broker, f"evacuator-host-view-{host}"), trust=trust, host=host,
            exchange=broker.peers_exchange, view=view, clock=clock,
        ),
    )  # fmt: skip


def room_reader_for(settings: Settings) -> LibvirtRoomReader:
    host, placement = settings.host, settings.placement
    return LibvirtRoomReader(name=host.name, uri=host.libvirt_uri, pool=host.storage_pool,
                             caps=caps_of(placement))


def caps_of(placement: PlacementSettings) -> RoomCaps:
    return RoomCaps(guest_memory_bytes=placement.guest_memory_bytes, guest_vcpus=placement.guest_vcpus)


def switches_of(settings: Settings) -> Switches:
    host, placement = settings.host, settings.placement
    return Switches(maintenance=placement.maintenance, accepting=placement.accepting,
                    libvirt_uri=host.advertised_libvirt_uri, storage_pool=host.storage_pool,
                    move_back=settings.return_to_service.move_back)  # fmt: skip


def host_view_for(settings: Settings, *, clock: Callable[[], datetime],
                  room: RoomReader | None = None) -> HostViewParts:  # fmt: skip
    """This daemon's host view as its settings describe it (not started); `room`: its libvirt's by default."""
    def build(reader: RoomReader) -> HostViewParts:
        parts = build_host_view(
            host=settings.host.name, broker=settings.broker, trust=peer_trust(settings), room=reader,
            view_settings=settings.host_view, switches=switches_of(settings), clock=clock,
        )  # fmt: skip
        # In maintenance by the settings: not in service either, as the published state says (switches_of).
        parts.in_service.set_maintenance(settings.placement.maintenance)
        return parts

    if room is not None:
        return build(room)
    own = room_reader_for(settings)
    return replace(build(own), close_room=own.close)


def guard_state_for(settings: Settings, label: str) -> BrokerGuardState:
    """The cloud-wide pause, evacuation permits and guard lock, as this host's user in the peers vhost."""
    broker = settings.broker
    return BrokerGuardState(peers_connection(broker, f"evacuator-{label}-{settings.host.name}"),
                            exchange=broker.peers_exchange)  # fmt: skip


def guard_for(settings: Settings, parts: HostViewParts, *, clock: Callable[[], datetime]) -> CloudGuard:
    """The blast-radius guards of this host's daemon over its host view; with guards.enabled false, only
    the cloud-wide pause holds (the permits are taken all the same, so `evacuator status` can count them)."""
    return CloudGuard(host=settings.host.name, policy=guard_policy(settings),
                      state=guard_state_for(settings, "guards"), view=parts.view,
                      announce=parts.publisher.set_evacuating, clock=clock,
                      poll_seconds=settings.guards.poll_seconds)  # fmt: skip


def guard_policy(settings: Settings) -> GuardPolicy:
    """The guards' limits; with guards.enabled false, limits that hold nothing back."""
    guards = settings.guards
    if not guards.enabled:
        return GuardPolicy(max_evacuating_share=1.0, min_free_share=0.0, min_start_spacing_seconds=0.0)
    return GuardPolicy(max_evacuating_share=guards.max_evacuating_share, min_free_share=guards.min_free_share,
                       min_start_spacing_seconds=guards.min_start_spacing_seconds)  # fmt: skip


def listener_for(settings: Settings, *, clock: Callable[[], datetime]) -> HostStateSubscriber:
    """A subscriber only, for `evacuator hosts` (as this host's user, in the peers vhost)."""
    view = HostView(stale_after_seconds=settings.host_view.stale_after)
    return HostStateSubscriber(
        peers_connection(settings.broker, f"evacuator-hosts-{settings.host.name}"),
        trust=peer_trust(settings), host=settings.host.name, exchange=settings.broker.peers_exchange,
        view=view, clock=clock,
    )  # fmt: skip
