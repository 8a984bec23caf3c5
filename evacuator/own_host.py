"""This host's daemon serving its peers' movers: the digests of its volumes and the copies it receives."""

from __future__ import annotations

from evacuator.data_wire import server_tls
from evacuator.errors import HypervisorError
from evacuator.hypervisor import VmState, VolumeRef
from evacuator.libvirt_host import open_libvirt_host
from evacuator.peer_digests import VolumeDigester
from evacuator.settings import DataChannelSettings
from evacuator.volume_receiver import FileLocator, ReceivableFile, VolumeReceiver


def own_volume_digester(name: str, uri: str, pool: str) -> VolumeDigester:
    """Flushes and digests this host's volumes from their files, for peers verifying a copy they sent; other
    pools are refused."""

    def digest(asked_pool: str, volume: str) -> str | None:
        if asked_pool != pool:
            raise HypervisorError(f"pool {asked_pool} is not the evacuator's pool on {name}")
        with open_libvirt_host(name, uri, pool, local_files=True) as own:
            # A running guest's disk is nobody's copy to verify: no reading or flushing it on request.
            if any(VolumeRef(pool=pool, volume=volume) in vm.volumes
                   for vm in own.list_vms() if vm.state is not VmState.SHUT_OFF):
                raise HypervisorError(f"{pool}/{volume} on {name} belongs to a running VM")
            # Durable first: the mover removes the source once this copy is verified and runs here.
            return own.local_digest(pool, volume, flush=True)

    return digest


def own_volume_target(name: str, uri: str, pool: str) -> FileLocator:
    """This host's volumes as files its data channel may write: of its pool, and used by no defined VM."""

    def locate(asked_pool: str, volume: str) -> ReceivableFile:
        if asked_pool != pool:
            raise HypervisorError(f"pool {asked_pool} is not the evacuator's pool on {name}")
        with open_libvirt_host(name, uri, pool, local_files=True) as own:
            if any(VolumeRef(pool=pool, volume=volume) in vm.volumes for vm in own.list_vms()):
                raise HypervisorError(f"{pool}/{volume} on {name} belongs to a defined VM")
            info = own.find_volume(pool, volume)
            path = None if info is None else own.local_file(pool, volume)
            if info is None or path is None:
                raise HypervisorError(f"{name} has no file for {pool}/{volume} that this process sees")
            # A raw file is the guest's disk, byte for byte; a qcow2 file may outgrow its virtual size.
            limit_bytes = info.capacity_bytes if info.format == "raw" else None
            return ReceivableFile(path=path, limit_bytes=limit_bytes)

    return locate


def volume_receiver(name: str, uri: str, pool: str, channel: DataChannelSettings) -> VolumeReceiver:
    """This host's data channel as its settings describe it (not yet listening)."""
    return VolumeReceiver(
        host=name, locate=own_volume_target(name, uri, pool), listen_address=channel.listen_address,
        port=channel.port, advertise_address=channel.advertise_address,
        tls=server_tls(name), allow_clear=channel.encryption != "tls",
        stall_timeout_seconds=channel.stall_timeout_seconds, max_transfers=channel.max_transfers,
    )
