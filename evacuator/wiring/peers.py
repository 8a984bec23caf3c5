"""Wiring of what crosses between hosts: the hosts a mover opens, this host's services for its peers' movers,
and the cloud-wide transfer caps on the broker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from evacuator.errors import HypervisorError
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import Hypervisor
from evacuator.moves.runner import OpenHost
from evacuator.moves.transfer_slots import ClusterSlots, NoClusterCap
from evacuator.peers.cloud_slots import BrokerCloudCaps
from evacuator.peers.own_host import PeerServices, own_volume_digester, volume_receiver
from evacuator.peers.responder import DigestResponder
from evacuator.peers.rpc import PeerDigestClient
from evacuator.settings import Settings
from evacuator.transfer.sender import DataChannelClient
from notifiers.connection import blocking_connection_factory


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


def cluster_slots_for(settings: Settings) -> ClusterSlots:
    evacuation = settings.evacuation
    incoming = evacuation.cloud_wide_incoming_cap
    if evacuation.max_total_transfers is None and incoming is None:
        return NoClusterCap()
    connect = blocking_connection_factory(
        settings.broker, connection_name=f"evacuator-transfer-slot-{settings.host.name}")
    return BrokerCloudCaps(connect, prefix=settings.broker.peers_exchange,
                           total=evacuation.max_total_transfers, incoming_per_host=incoming)


def peer_services(settings: Settings) -> PeerServices:
    """What this host's daemon serves its peers' movers: digests of its volumes and, when on, its data
    channel (started by the runtime, after the broker is reached)."""
    host, broker, channel = settings.host, settings.broker, settings.data_channel
    receiver = volume_receiver(
        host.name, host.libvirt_uri, host.storage_pool, channel,
        min_bytes_per_second=settings.evacuation.copy_min_bytes_per_second,
    ) if channel.enabled else None
    return PeerServices(
        digests=DigestResponder(
            blocking_connection_factory(broker, connection_name=f"evacuator-digest-answers-{host.name}"),
            host=host.name, exchange=broker.peers_exchange,
            digest_volume=own_volume_digester(host.name, host.libvirt_uri, host.storage_pool),
            issue_ticket=None if receiver is None else receiver.issue,
        ),
        receiver=receiver,
    )
