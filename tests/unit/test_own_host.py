"""What this host's daemon serves its peers from its own host (the digester and the data channel's file
locator), over a fake of the host it opens: a fresh one per request, and its own volumes only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from evacuator.errors import HypervisorError
from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import VmInfo, VmState, VolumeInfo, VolumeRef
from evacuator.peers.own_host import OwnHost, own_volume_digester, own_volume_target

POOL = "evacuator"
DIGEST = "ab" * 32


class FakeOwnHost:
    """One opened connection to this host: its VMs, and volumes whose files are under `root`."""

    def __init__(self, *, vms: tuple[VmInfo, ...], volumes: dict[str, VolumeInfo], root: Path) -> None:
        self._vms = vms
        self._volumes = volumes
        self._root = root
        self.flushed: list[str] = []

    def list_vms(self) -> tuple[VmInfo, ...]:
        return self._vms

    def local_digest(self, pool: str, volume: str, *, flush: bool = False) -> str | None:
        if flush:
            self.flushed.append(volume)
        return DIGEST if volume in self._volumes else None

    def find_volume(self, pool: str, volume: str) -> VolumeInfo | None:
        return self._volumes.get(volume)

    def local_file(self, pool: str, volume: str) -> Path | None:
        return self._root / volume if volume in self._volumes else None

    def disk_files(self) -> frozenset[Path]:
        return frozenset(self._root / ref.volume for vm in self._vms for ref in vm.volumes)


class Opener:
    """The composition root's opener, counting how often the host was opened and closed."""

    def __init__(self, host: FakeOwnHost) -> None:
        self.host = host
        self.opened = 0
        self.closed = 0

    @contextmanager
    def __call__(self) -> Iterator[OwnHost]:
        self.opened += 1
        try:
            yield self.host
        finally:
            self.closed += 1


def _vm(volume: str, state: VmState) -> VmInfo:
    return VmInfo(uuid=f"uuid-{volume}", name=f"vm-{volume}", state=state, macs=(),
                  volumes=(VolumeRef(pool=POOL, volume=volume),), facts=VmFacts())


def _volume(name: str, *, format: str = "raw") -> VolumeInfo:
    return VolumeInfo(pool=POOL, volume=name, capacity_bytes=1 << 30, allocation_bytes=0, format=format)


@pytest.fixture
def opener(tmp_path: Path) -> Opener:
    volumes = {name: _volume(name) for name in ("copy.img", "running.img", "stopped.img")}
    volumes["copy.qcow2"] = _volume("copy.qcow2", format="qcow2")
    vms = (_vm("running.img", VmState.RUNNING), _vm("stopped.img", VmState.SHUT_OFF))
    return Opener(FakeOwnHost(vms=vms, volumes=volumes, root=tmp_path))


# Which peer's copy last landed in which volume (VolumeReceiver.written_by).
WRITTEN = {(POOL, "copy.img"): "host.hv-01", (POOL, "stopped.img"): "host.hv-01",
           (POOL, "running.img"): "host.hv-01"}


def _written_by(pool: str, volume: str) -> str | None:
    return WRITTEN.get((pool, volume))


def test_each_digest_opens_the_host_afresh_and_flushes_the_copy_first(opener: Opener) -> None:
    digest = own_volume_digester("hv-02", POOL, opener, _written_by)
    assert digest(POOL, "copy.img", "host.hv-01") == DIGEST
    assert digest(POOL, "stopped.img", "host.hv-01") == DIGEST  # its copy, of a VM defined here meanwhile
    assert (opener.opened, opener.closed) == (2, 2)  # a libvirtd restart between them costs nothing
    assert opener.host.flushed == ["copy.img", "stopped.img"]


@pytest.mark.parametrize(("volume", "requester"), [
    ("copy.img", "host.hv-03"), ("stopped.img", "host.hv-03"), ("running.img", "host.hv-03"),
    ("copy.qcow2", "host.hv-01"), ("absent.img", "host.hv-01")])  # fmt: skip
def test_with_the_channel_on_only_the_peer_whose_copy_wrote_a_volume_gets_its_digest(
    opener: Opener, volume: str, requester: str
) -> None:
    # copy.qcow2 came through libvirt (the channel fell back): no record, so the mover reads it back.
    with pytest.raises(HypervisorError, match="no copy from"):
        own_volume_digester("hv-02", POOL, opener, _written_by)(POOL, volume, requester)
    assert opener.opened == 0 and opener.host.flushed == [], "nothing read, nothing flushed"


def test_with_the_channel_off_only_a_volume_no_vm_names_is_digested(opener: Opener) -> None:
    digest = own_volume_digester("hv-02", POOL, opener, None)
    assert digest(POOL, "copy.qcow2", "host.hv-03") == DIGEST  # a copy uploaded through libvirt
    assert digest(POOL, "absent.img", "host.hv-03") is None  # no file: the mover reads back instead
    with pytest.raises(HypervisorError, match="is a defined VM's disk"):
        digest(POOL, "stopped.img", "host.hv-03")
    with pytest.raises(HypervisorError, match="belongs to a running VM"):
        digest(POOL, "running.img", "host.hv-03")
    assert opener.host.flushed == ["copy.qcow2", "absent.img"]


def test_a_running_vms_disk_is_neither_read_nor_flushed_for_a_peer(opener: Opener) -> None:
    with pytest.raises(HypervisorError, match="belongs to a running VM"):
        own_volume_digester("hv-02", POOL, opener, _written_by)(POOL, "running.img", "host.hv-01")
    assert opener.host.flushed == [] and opener.closed == 1


def test_another_pool_is_refused_without_opening_the_host(opener: Opener) -> None:
    with pytest.raises(HypervisorError, match="not the evacuator's pool on hv-02"):
        own_volume_digester("hv-02", POOL, opener, _written_by)("default", "copy.img", "host.hv-01")
    with pytest.raises(HypervisorError, match="not the evacuator's pool on hv-02"):
        own_volume_target("hv-02", POOL, opener)("default", "copy.img")
    assert opener.opened == 0


def test_the_data_channel_may_write_a_volume_no_vm_names_up_to_its_size(opener: Opener,
                                                                        tmp_path: Path) -> None:
    locate = own_volume_target("hv-02", POOL, opener)
    raw = locate(POOL, "copy.img")
    assert (raw.path, raw.limit_bytes) == (tmp_path / "copy.img", 1 << 30)
    # qcow2 holds metadata and internal snapshots besides the guest's bytes.
    assert locate(POOL, "copy.qcow2").limit_bytes == 2 * (1 << 30) + (64 << 20)
    assert (opener.opened, opener.closed) == (2, 2)


@pytest.mark.parametrize(("volume", "error"), [
    ("stopped.img", "belongs to a defined VM"),
    ("running.img", "belongs to a defined VM"),
    ("absent.img", "has no file for evacuator/absent.img"),
])
def test_the_data_channel_may_not_write_a_defined_vms_disk_or_a_file_it_cannot_see(
    opener: Opener, volume: str, error: str,
) -> None:
    with pytest.raises(HypervisorError, match=error):
        own_volume_target("hv-02", POOL, opener)(POOL, volume)
