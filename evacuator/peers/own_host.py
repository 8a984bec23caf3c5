"""This host's daemon serving its peers' movers: the digests of its volumes and the copies it receives."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from evacuator.errors import HypervisorError
from evacuator.hypervisor.model import VmInfo, VolumeInfo, VolumeRef, is_active
from evacuator.peers.messages import VolumeDigester
from evacuator.peers.responder import DigestResponder
from evacuator.transfer.receiver import VolumeReceiver
from evacuator.transfer.tickets import FileLocator, ReceivableFile


class OwnHost(Protocol):
    """What serving peers asks of this host's own libvirt, seeing its files as this process does
    (LibvirtHost opened with local_files)."""

    def list_vms(self) -> tuple[VmInfo, ...]: ...

    def local_digest(self, pool: str, volume: str, *, flush: bool = False) -> str | None: ...

    def find_volume(self, pool: str, volume: str) -> VolumeInfo | None: ...

    def local_file(self, pool: str, volume: str) -> Path | None: ...

    def disk_files(self) -> frozenset[Path]: ...


OpenOwnHost = Callable[[], AbstractContextManager[OwnHost]]
"""Opens this host for one request and closes it after: a fresh connection each time, so a libvirtd restart
never leaves the daemon answering through a dead one (the composition root builds it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerServices:
    """What this host's daemon runs for its peers' movers: digest answers and, when on, its data channel."""

    digests: DigestResponder
    receiver: VolumeReceiver | None

    def start(self) -> None:
        if self.receiver is not None:
            self.receiver.start()  # before the digests' consumer, which hands out its tickets
        self.digests.start()

    def close(self) -> None:
        self.digests.close()
        if self.receiver is not None:
            self.receiver.close()


def own_volume_digester(
    name: str, pool: str, open_host: OpenOwnHost, written_by: Callable[[str, str], str | None] | None
) -> VolumeDigester:
    """Flushes and digests this host's volumes from their files, for a peer verifying a copy it sent: no host
    learns the content of a disk it did not send. With the data channel on, only a volume the asking peer's
    own transfer wrote here (`written_by`: the requester of the last transfer into a volume, while
    remembered); any other is refused without being opened, and its mover reads its copy back instead. With
    the channel off (`written_by` None) this daemon cannot know who copied what (libvirt uploaded it), so
    it digests only a volume no VM defined here names, as a copy awaiting its verification; a running or
    defined VM's disk, never."""

    def digest(asked_pool: str, volume: str, requester: str) -> str | None:
        if asked_pool != pool:
            raise HypervisorError(f"pool {asked_pool} is not the evacuator's pool on {name}")
        if written_by is not None and written_by(pool, volume) != requester:
            raise HypervisorError(f"no copy from {requester} into {pool}/{volume} is open on {name}")
        ref = VolumeRef(pool=pool, volume=volume)
        with open_host() as own:
            users = [vm for vm in own.list_vms() if ref in vm.volumes]
            # A running guest's disk is nobody's copy to verify: no reading or flushing it on request.
            if any(is_active(vm) for vm in users):
                raise HypervisorError(f"{pool}/{volume} on {name} belongs to a running VM")
            if written_by is None and users:
                raise HypervisorError(f"{pool}/{volume} on {name} is a defined VM's disk")
            # Durable first: the mover removes the source once this copy is verified and runs here.
            return own.local_digest(pool, volume, flush=True)

    return digest


def own_volume_target(name: str, pool: str, open_host: OpenOwnHost) -> FileLocator:
    """This host's volumes as files its data channel may write: of its pool, and named by no defined VM
    (as a volume, a file, or a file in a backing chain)."""

    def locate(asked_pool: str, volume: str) -> ReceivableFile:
        if asked_pool != pool:
            raise HypervisorError(f"pool {asked_pool} is not the evacuator's pool on {name}")
        with open_host() as own:
            if any(VolumeRef(pool=pool, volume=volume) in vm.volumes for vm in own.list_vms()):
                raise HypervisorError(f"{pool}/{volume} on {name} belongs to a defined VM")
            info = own.find_volume(pool, volume)
            path = None if info is None else own.local_file(pool, volume)
            if info is None or path is None:
                raise HypervisorError(f"{name} has no file for {pool}/{volume} that this process sees")
            if path.resolve() in {disk.resolve() for disk in own.disk_files()}:
                raise HypervisorError(f"{pool}/{volume} on {name} is a disk of a defined VM")
            # A raw file is the guest's disk, byte for byte. A qcow2 file holds metadata besides, and
            # internal snapshots: twice the virtual size bounds it without refusing real disks.
            raw = info.format == "raw"
            return ReceivableFile(path=path, limit_bytes=info.capacity_bytes if raw else
                                  2 * info.capacity_bytes + (64 << 20))

    return locate
