"""Wiring of what crosses between hosts: the hosts a mover opens, this host's services for its peers' movers,
and the cloud-wide transfer caps on the broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from evacuator.errors import HypervisorError
from evacuator.hypervisor.libvirt.host import LibvirtHost, open_libvirt_host
from evacuator.hypervisor.model import Hypervisor
from evacuator.hypervisor.room import RoomReader
from evacuator.moves.attempts import OpenHost
from evacuator.moves.transfer_slots import ClusterSlots, NoClusterCap
from evacuator.peers.claim_desk import ClaimDesk, free_above_reserve
from evacuator.peers.cloud_slots import BrokerCloudCaps
from evacuator.peers.messages import PeerTrust
from evacuator.peers.own_host import OpenOwnHost, PeerServices, own_volume_digester, own_volume_target
from evacuator.peers.responder import DigestResponder
from evacuator.peers.rpc import PeerClient
from evacuator.placement.model import PlacementPolicy
from evacuator.settings import DataChannelSettings, HostSettings, Settings
from evacuator.transfer.receiver import VolumeReceiver
from evacuator.transfer.sender import DataChannelClient
from evacuator.transfer.wire import server_tls, takes_clear_text
from notifiers.connection import ConnectionFactory, blocking_connection_factory
from notifiers.settings import BrokerSettings


def placement_policy(settings: Settings) -> PlacementPolicy:
    """The placement as this host's settings describe it: its peers first, in order (the admin's spares),
    the host view's staleness, and the reserve every host keeps (the one its own claim desk keeps too)."""
    return PlacementPolicy(stale_after_seconds=settings.host_view.stale_after,
                           reserve_fraction=settings.placement.reserve_fraction,
                           preferred=tuple(p.name for p in settings.peers))  # fmt: skip


def peer_trust(settings: Settings) -> PeerTrust:
    """Who is who between daemons: this host's broker user (broker.url's) and each peer's
    (`peers[].broker_user`, default `host.<name>`); with placement.scope cloud, any host's `host.<name>`."""
    return PeerTrust(own_user=settings.broker.user,
                     peer_users={peer.name: peer.user for peer in settings.peers},
                     any_host=settings.placement.scope == "cloud")  # fmt: skip


def peers_connection(broker: BrokerSettings, name: str) -> ConnectionFactory:
    """Connections to the daemons' own vhost (broker.peers_vhost), where no tenant may go."""
    return blocking_connection_factory(broker, connection_name=name, vhost=broker.peers_virtual_host)


def claims_client_for(settings: Settings) -> PeerClient:
    """How this host's movers claim room on a destination through its daemon (short connections)."""
    return PeerClient(
        peers_connection(settings.broker, f"evacuator-claims-{settings.host.name}"),
        trust=peer_trust(settings), exchange=settings.broker.peers_exchange,
        timeout_base_seconds=settings.evacuation.copy_timeout_base_seconds,
        min_bytes_per_second=settings.evacuation.copy_min_bytes_per_second,
    )  # fmt: skip


Reach = Callable[[str], tuple[str, str] | None]
"""A host's libvirt URI and storage pool as it publishes them on the host view (None: not heard, or it
publishes none): how a host that is no configured peer is opened, with placement.scope cloud."""


def _nowhere(name: str) -> tuple[str, str] | None:
    return None


def open_host_for(settings: Settings, reach: Reach = _nowhere) -> OpenHost:
    """Each move attempt opens fresh connections to this host and the chosen peer (one thread owns them):
    a configured peer as listed; any other host where `reach` says (scope cloud), or not at all."""
    hosts = {p.name: (p.libvirt_uri, p.storage_pool) for p in settings.peers}
    hosts[settings.host.name] = (settings.host.libvirt_uri, settings.host.storage_pool)
    cloud = settings.placement.scope == "cloud"
    connect = peers_connection(settings.broker, f"evacuator-digests-{settings.host.name}")
    peers = PeerClient(
        connect,
        trust=peer_trust(settings),
        exchange=settings.broker.peers_exchange,
        timeout_base_seconds=settings.evacuation.copy_timeout_base_seconds,
        min_bytes_per_second=settings.evacuation.copy_min_bytes_per_second,
    )
    channel = settings.data_channel
    sender = DataChannelClient(
        peers, encryption=channel.encryption,
        stall_timeout_seconds=channel.stall_timeout_seconds,
        min_bytes_per_second=settings.evacuation.copy_min_bytes_per_second,
        # From this host's migration address: the one its peers' channels take connections from.
        source_address=settings.host.migration_address,
    ) if channel.enabled else None

    @contextmanager
    def open_host(name: str) -> Iterator[Hypervisor]:
        found = hosts.get(name) or (reach(name) if cloud else None)
        if found is None:
            raise HypervisorError(f"host {name} is neither this host nor a configured peer"
                                  + (", and publishes no libvirt URI on the host view" if cloud else ""))
        uri, pool = found
        # This host's disks are files this process may read itself; a peer's are digested by the peer's own
        # daemon when it answers, else read through libvirt.
        local = name == settings.host.name
        with open_libvirt_host(name, uri, pool, local_files=local,
                               peer_digests=None if local else peers,
                               volume_sender=None if local else sender) as host:
            yield host

    return open_host


def cluster_slots_for(settings: Settings) -> ClusterSlots:
    evacuation = settings.evacuation
    incoming = evacuation.cloud_wide_incoming_cap
    if evacuation.max_total_transfers is None and incoming is None:
        return NoClusterCap()
    connect = peers_connection(settings.broker, f"evacuator-transfer-slot-{settings.host.name}")
    return BrokerCloudCaps(connect, prefix=settings.broker.peers_exchange,
                           total=evacuation.max_total_transfers, incoming_per_host=incoming,
                           max_wait_seconds=evacuation.cloud_slot_max_wait_seconds)  # fmt: skip


def status_connection_for(settings: Settings) -> ConnectionFactory:
    """How `evacuator peers` reaches the broker to read what it shows of the hosts' daemons and slots."""
    return peers_connection(settings.broker, f"evacuator-peers-{settings.host.name}")


def own_host_opener(host: HostSettings) -> OpenOwnHost:
    """This host's libvirt, seeing its files as this process does, opened afresh for each request a peer
    makes: a libvirtd restart never leaves the daemon with a dead connection."""

    def open_own() -> LibvirtHost:
        return open_libvirt_host(host.name, host.libvirt_uri, host.storage_pool, local_files=True)

    return open_own


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelAddresses:
    """Where this host's data channel listens, the address its tickets name (None: where peers reach its
    libvirt), and the peers' addresses or names it takes connections from (resolved when it starts)."""

    listen: str
    advertise: str | None
    allow_from: Sequence[str]


def channel_addresses(settings: Settings) -> ChannelAddresses | None:
    """The data channel's addresses as the settings give them; None while the channel is off."""
    listen = settings.data_channel_listen_address()
    if not settings.data_channel.enabled or listen is None:  # settings refuse an enabled channel without one
        return None
    return ChannelAddresses(listen=listen, advertise=settings.data_channel_advertise_address(),
                            allow_from=settings.data_channel_allowed_addresses())


def volume_receiver(host: HostSettings, channel: DataChannelSettings, addresses: ChannelAddresses, *,
                    min_bytes_per_second: float) -> VolumeReceiver:
    """This host's data channel as its settings describe it (not yet listening); a transfer slower than
    `min_bytes_per_second` (the evacuation's copy_min_bytes_per_second) is dropped. Clear text only when
    the admin wrote `encryption: none`."""
    return VolumeReceiver(
        host=host.name, locate=own_volume_target(host.name, host.storage_pool, own_host_opener(host)),
        listen_address=addresses.listen, port=channel.port, advertise_address=addresses.advertise,
        allow_from=addresses.allow_from, tls=server_tls(host.name),
        allow_clear=takes_clear_text(channel.encryption),
        stall_timeout_seconds=channel.stall_timeout_seconds, max_transfers=channel.max_transfers,
        min_bytes_per_second=min_bytes_per_second,
    )


def build_peer_services(
    *, host: HostSettings, broker: BrokerSettings, trust: PeerTrust, channel: DataChannelSettings,
    channel_addresses: ChannelAddresses | None, min_bytes_per_second: float, connection_name: str,
    claims: ClaimDesk | None = None,
) -> PeerServices:
    """What a host's daemon serves its peers' movers: digests of its volumes on the broker's peers exchange,
    claims on its room (with `claims`; without, refused as `claims_not_served`) and, when `channel` is
    enabled (with its `channel_addresses`), its data channel (none started yet).
    `connection_name`: how the broker lists the answering connection; `trust`: whom it answers."""
    receiver = volume_receiver(
        host, channel, channel_addresses, min_bytes_per_second=min_bytes_per_second,
    ) if channel.enabled and channel_addresses is not None else None
    return PeerServices(
        digests=DigestResponder(
            peers_connection(broker, connection_name), trust=trust,
            host=host.name, exchange=broker.peers_exchange,
            digest_volume=own_volume_digester(host.name, host.storage_pool, own_host_opener(host),
                                              written_by=None if receiver is None else receiver.written_by),
            issue_ticket=None if receiver is None else receiver.issue,
            claims=claims,
        ),
        receiver=receiver,
    )


def claim_desk_for(settings: Settings, room: RoomReader) -> ClaimDesk:
    """This host's answers to claims on its room: its live room read from `room`, less the reserve its
    peers' placement keeps on it (placement.reserve_fraction, the same setting on every host)."""
    return ClaimDesk(host=settings.host.name, free_room=free_above_reserve(room, placement_policy(settings)))


def peer_services(settings: Settings, *, room: RoomReader | None = None) -> PeerServices:
    """What this host's daemon serves its peers' movers (started by the runtime, after the broker is
    reached); with `room`, claims on this host's room too."""
    return build_peer_services(
        host=settings.host, broker=settings.broker, trust=peer_trust(settings), channel=settings.data_channel,
        channel_addresses=channel_addresses(settings),
        min_bytes_per_second=settings.evacuation.copy_min_bytes_per_second,
        connection_name=f"evacuator-digest-answers-{settings.host.name}",
        claims=None if room is None else claim_desk_for(settings, room),
    )
