"""An in-memory Hypervisor for tests: records calls, follows libvirt's rules strictly, can inject errors."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from evacuator.errors import HypervisorError
from evacuator.hypervisor.model import (
    Hypervisor,
    LiveRead,
    StoredFile,
    VmInfo,
    VmState,
    VolumeInfo,
    parse_definition,
)
from evacuator.hypervisor.origin import Origin, with_origin
from evacuator.transfer.chunks import Chunk, DataChunk, HoleChunk
from evacuator.transfer.digests import block_digest_of_chunks

OPERATIONS = frozenset({
    "list_vms", "find_vm", "vm_definition_xml", "define_vm", "start_vm", "request_shutdown", "destroy_vm",
    "undefine_vm", "find_volume", "create_volume", "read_volume", "write_volume", "delete_volume",
    "migrate_live", "read_volume_live", "stored_file", "read_volume_range", "patch_volume", "set_origin",
})
_BLOCK_BYTES = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class _Vm:
    xml: str
    info: VmInfo


@dataclass(slots=True, kw_only=True)
class _Volume:
    content: bytearray
    allocated_bytes: int
    format: str
    file: int  # which "file" holds the volume: new at each creation, as a live read's identity


class FakeHypervisor:
    """A hypervisor host in memory. Guests ignore ACPI unless `honours_acpi`; `calls` lists what was done."""

    def __init__(self, *, name: str, honours_acpi: bool = False) -> None:
        self._name = name
        self.honours_acpi = honours_acpi
        self.calls: list[str] = []
        self._vms: dict[str, _Vm] = {}
        self._volumes: dict[tuple[str, str], _Volume] = {}
        self._errors: dict[str, list[BaseException]] = {}
        self._passes: dict[str, int] = {}
        self._file_numbers = itertools.count(1)
        # Called with each offset a live read is about to read: a test writes there as a guest would.
        self.before_live_read: Callable[[int], None] | None = None

    @property
    def name(self) -> str:
        return self._name

    # --- test helpers -------------------------------------------------------------------------------------

    def inject_error(
        self, operation: str, exc: BaseException, *, times: int = 1, after_calls: int = 0
    ) -> None:
        """After `after_calls` more calls succeed, the next `times` calls of `operation` raise `exc` before
        doing anything."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; known: {sorted(OPERATIONS)}")
        self._errors.setdefault(operation, []).extend([exc] * times)
        self._passes[operation] = after_calls

    def add_volume(
        self, pool: str, volume: str, *, capacity_bytes: int, data: bytes = b"", format: str = "raw"
    ) -> None:
        content = bytearray(capacity_bytes)
        content[: len(data)] = data
        self._volumes[(pool, volume)] = _Volume(content=content, allocated_bytes=len(data), format=format,
                                                file=next(self._file_numbers))

    def guest_write(self, pool: str, volume: str, offset: int, data: bytes) -> None:
        """Changes a volume's bytes behind the migrator's back, as a running guest writes its disk."""
        self._volume(pool, volume).content[offset : offset + len(data)] = data

    def add_vm(self, definition_xml: str, *, state: VmState = VmState.SHUT_OFF) -> VmInfo:
        info = self._define(definition_xml)
        self._set_state(info.uuid, state)
        return self._vms[info.uuid].info

    def peek_vm(self, uuid: str) -> VmInfo | None:
        """Like find_vm, but neither recorded nor subject to injected errors."""
        vm = self._vms.get(uuid)
        return None if vm is None else vm.info

    def volume_bytes(self, pool: str, volume: str) -> bytes:
        return bytes(self._volumes[(pool, volume)].content)

    def volume_names(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self._volumes))

    # --- Hypervisor ---------------------------------------------------------------------------------------

    def list_vms(self) -> tuple[VmInfo, ...]:
        self._enter("list_vms")
        return tuple(sorted((vm.info for vm in self._vms.values()), key=lambda info: info.name))

    def find_vm(self, uuid: str) -> VmInfo | None:
        self._enter("find_vm", uuid)
        vm = self._vms.get(uuid)
        return None if vm is None else vm.info

    def vm_definition_xml(self, uuid: str) -> str:
        self._enter("vm_definition_xml", uuid)
        return self._vm(uuid).xml

    def define_vm(self, definition_xml: str) -> VmInfo:
        self._enter("define_vm")
        return self._define(definition_xml)

    def set_origin(self, uuid: str, origin: Origin | None) -> None:
        self._enter("set_origin", uuid)
        vm = self._vm(uuid)
        self._vms[uuid] = _Vm(xml=with_origin(vm.xml, origin), info=replace(vm.info, origin=origin))

    def start_vm(self, uuid: str) -> None:
        self._enter("start_vm", uuid)
        vm = self._vm(uuid)
        if vm.info.state is not VmState.SHUT_OFF:
            raise HypervisorError(f"host {self._name}: start_vm {uuid}: domain is already active")
        for ref in vm.info.volumes:
            if (ref.pool, ref.volume) not in self._volumes:
                raise HypervisorError(f"host {self._name}: start_vm {uuid}: no {ref.pool}/{ref.volume}")
        self._set_state(uuid, VmState.RUNNING)

    def request_shutdown(self, uuid: str) -> None:
        self._enter("request_shutdown", uuid)
        self._require_active(uuid, "request_shutdown")
        if self.honours_acpi:
            self._set_state(uuid, VmState.SHUT_OFF)

    def destroy_vm(self, uuid: str) -> None:
        self._enter("destroy_vm", uuid)
        self._require_active(uuid, "destroy_vm")
        self._set_state(uuid, VmState.SHUT_OFF)

    def undefine_vm(self, uuid: str) -> None:
        self._enter("undefine_vm", uuid)
        # Stricter than libvirt, which would keep a running VM as a transient one: a migrator must never.
        if self._vm(uuid).info.state is not VmState.SHUT_OFF:
            raise HypervisorError(f"host {self._name}: undefine_vm {uuid}: the fake refuses a running VM")
        del self._vms[uuid]

    def find_volume(self, pool: str, volume: str) -> VolumeInfo | None:
        self._enter("find_volume", pool, volume)
        if (pool, volume) not in self._volumes:
            return None
        return self._volume_info(pool, volume)

    def create_volume(
        self, pool: str, volume: str, *, capacity_bytes: int, format: str = "raw"
    ) -> VolumeInfo:
        self._enter("create_volume", pool, volume)
        if (pool, volume) in self._volumes:
            raise HypervisorError(f"host {self._name}: create_volume {pool}/{volume}: already exists")
        self.add_volume(pool, volume, capacity_bytes=capacity_bytes, format=format)
        return self._volume_info(pool, volume)

    def read_volume(self, pool: str, volume: str) -> Iterator[Chunk]:
        self._enter("read_volume", pool, volume)
        return iter(_chunks(bytes(self._volume(pool, volume).content)))

    def volume_digest(self, pool: str, volume: str) -> str:
        # Through read_volume, so a fault armed there also hits verification, as a real read-back would.
        return block_digest_of_chunks(self.read_volume(pool, volume))

    def write_volume(self, pool: str, volume: str, chunks: Iterable[Chunk]) -> int:
        self._enter("write_volume", pool, volume)
        stored = self._volume(pool, volume)
        content = stored.content
        offset = written_bytes = 0
        for chunk in chunks:
            if isinstance(chunk, HoleChunk):
                content[offset : offset + chunk.length_bytes] = bytes(chunk.length_bytes)
                offset += chunk.length_bytes
            else:
                content[offset : offset + len(chunk.data)] = chunk.data
                offset += len(chunk.data)
                written_bytes += len(chunk.data)
            if offset > len(content):
                raise HypervisorError(f"host {self._name}: write_volume {pool}/{volume}: past its capacity")
        stored.allocated_bytes = written_bytes
        return written_bytes

    def read_volume_live(self, pool: str, volume: str) -> LiveRead | None:
        self._enter("read_volume_live", pool, volume)
        stored = self._volume(pool, volume)
        content = stored.content

        def each_block_when_asked() -> Iterator[Chunk]:
            for offset in range(0, len(content), _BLOCK_BYTES):
                if self.before_live_read is not None:
                    self.before_live_read(offset)
                yield from _chunks(bytes(content[offset : offset + _BLOCK_BYTES]))

        return LiveRead(chunks=each_block_when_asked(), identity=str(stored.file))

    def stored_file(self, pool: str, volume: str) -> StoredFile | None:
        self._enter("stored_file", pool, volume)
        stored = self._volume(pool, volume)
        return StoredFile(identity=str(stored.file), length_bytes=len(stored.content))

    def read_volume_range(
        self, pool: str, volume: str, *, offset_bytes: int, length_bytes: int
    ) -> Iterator[Chunk]:
        self._enter("read_volume_range", pool, volume)
        content = self._volume(pool, volume).content
        if offset_bytes + length_bytes > len(content):
            raise HypervisorError(f"host {self._name}: {pool}/{volume} ends before byte "
                                  f"{offset_bytes + length_bytes}")
        return iter(_chunks(bytes(content[offset_bytes : offset_bytes + length_bytes])))

    def patch_volume(self, pool: str, volume: str, patches: Iterable[tuple[int, bytes]]) -> int:
        self._enter("patch_volume", pool, volume)
        content = self._volume(pool, volume).content
        written = 0
        for offset, data in patches:
            if offset > len(content):
                content.extend(bytes(offset - len(content)))
            content[offset : offset + len(data)] = data
            written += len(data)
        return written

    def delete_volume(self, pool: str, volume: str) -> None:
        self._enter("delete_volume", pool, volume)
        self._volume(pool, volume)
        del self._volumes[(pool, volume)]

    def migrate_live(self, uuid: str, destination: Hypervisor) -> None:
        self._enter("migrate_live", uuid)
        if not isinstance(destination, FakeHypervisor):
            raise HypervisorError(f"host {self._name}: migrate_live needs a fake destination")
        vm = self._vm(uuid)
        if vm.info.state is not VmState.RUNNING:
            raise HypervisorError(f"host {self._name}: migrate_live {uuid}: domain is not running")
        for ref in vm.info.volumes:
            stored = self._volumes[(ref.pool, ref.volume)]
            destination.add_volume(ref.pool, ref.volume, capacity_bytes=len(stored.content),
                                   data=bytes(stored.content), format=stored.format)
        destination.add_vm(vm.xml, state=VmState.RUNNING)
        del self._vms[uuid]  # like libvirt: the source volumes stay behind

    # --- internals ----------------------------------------------------------------------------------------

    def _enter(self, operation: str, *args: str) -> None:
        self.calls.append(" ".join((operation, *args)))
        pending = self._errors.get(operation)
        if pending and self._passes.get(operation, 0) > 0:
            self._passes[operation] -= 1
        elif pending:
            raise pending.pop(0)

    def _define(self, definition_xml: str) -> VmInfo:
        definition = parse_definition(definition_xml)
        for other in self._vms.values():
            if other.info.name == definition.name and other.info.uuid != definition.uuid:
                raise HypervisorError(f"host {self._name}: define_vm: name {definition.name} is taken")
        existing = self._vms.get(definition.uuid)
        info = VmInfo(
            uuid=definition.uuid,
            name=definition.name,
            state=VmState.SHUT_OFF if existing is None else existing.info.state,
            macs=definition.macs,
            volumes=definition.volumes,
            facts=definition.facts,
            origin=definition.origin,
        )
        self._vms[definition.uuid] = _Vm(xml=definition_xml, info=info)
        return info

    def _set_state(self, uuid: str, state: VmState) -> None:
        vm = self._vms[uuid]
        self._vms[uuid] = replace(vm, info=replace(vm.info, state=state))

    def _vm(self, uuid: str) -> _Vm:
        vm = self._vms.get(uuid)
        if vm is None:
            raise HypervisorError(f"host {self._name}: no VM with uuid {uuid}")
        return vm

    def _require_active(self, uuid: str, operation: str) -> None:
        if self._vm(uuid).info.state is VmState.SHUT_OFF:
            raise HypervisorError(f"host {self._name}: {operation} {uuid}: domain is not running")

    def _volume(self, pool: str, volume: str) -> _Volume:
        stored = self._volumes.get((pool, volume))
        if stored is None:
            raise HypervisorError(f"host {self._name}: no volume {pool}/{volume}")
        return stored

    def _volume_info(self, pool: str, volume: str) -> VolumeInfo:
        stored = self._volumes[(pool, volume)]
        return VolumeInfo(pool=pool, volume=volume, capacity_bytes=len(stored.content),
                          allocation_bytes=stored.allocated_bytes, format=stored.format)


def _chunks(content: bytes) -> list[Chunk]:
    """Splits content into data and hole runs at block granularity, like a sparse stream does."""
    chunks: list[Chunk] = []
    for offset in range(0, len(content), _BLOCK_BYTES):
        block = content[offset : offset + _BLOCK_BYTES]
        is_hole = not any(block)
        last = chunks[-1] if chunks else None
        if is_hole and isinstance(last, HoleChunk):
            chunks[-1] = HoleChunk(length_bytes=last.length_bytes + len(block))
        elif is_hole:
            chunks.append(HoleChunk(length_bytes=len(block)))
        elif isinstance(last, DataChunk):
            chunks[-1] = DataChunk(data=last.data + block)
        else:
            chunks.append(DataChunk(data=block))
    return chunks
