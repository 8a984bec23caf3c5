"""Reading a host's room from its libvirt: the node's memory and CPUs, the active domains' memory, vCPUs and
functions, and the storage pool's sizes, over a read-only connection of its own (STYLE: watching libvirt
never shares the movers' connection)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import libvirt
import structlog

from evacuator.errors import HypervisorError, VmMetadataError
from evacuator.hypervisor.facts import NAMESPACE_URI, parse_facts
from evacuator.hypervisor.libvirt.connect import connect_libvirt
from evacuator.hypervisor.room import ActiveVm, FunctionKey, HostRoom, NodeReading, RoomCaps, room_of

log = structlog.get_logger(__name__)

_KIB = 1024
_MIB = 1024 * 1024


class LibvirtRoomReader:
    """A RoomReader over host `name`'s libvirt; the connection is opened at the first read and again after a
    failure (a restarted libvirtd), so one bad read never leaves it reading through a dead connection."""

    def __init__(self, *, name: str, uri: str, pool: str, caps: RoomCaps,
                 open_timeout_seconds: float = 10.0) -> None:  # fmt: skip
        self._name = name
        self._uri = uri
        self._pool = pool
        self._caps = caps
        self._open_timeout_seconds = open_timeout_seconds
        self._connection: Any | None = None
        self._lock = threading.Lock()  # the publisher reads; `evacuator hosts` or a test may too

    def read_room(self) -> HostRoom:
        with self._lock:
            if self._connection is None:
                self._connection = connect_libvirt(self._name, self._uri, read_only=True,
                                                   open_timeout_seconds=self._open_timeout_seconds)
            try:
                reading = read_node(self._connection, self._pool, host=self._name)
            except libvirt.libvirtError as exc:
                self._drop()
                raise HypervisorError(
                    f"host {self._name}: cannot read its room: {exc.get_error_message()}") from exc
        return room_of(reading, self._caps)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(libvirt.libvirtError):  # a dead connection is what we are dropping
                connection.close()


def read_node(connection: Any, pool: str, *, host: str) -> NodeReading:
    """The node's numbers as libvirt gives them (libvirt errors propagate)."""
    info = connection.getInfo()  # [model, memory MiB, cpus, ...]
    try:
        stats = connection.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        memory_bytes = int(stats["total"]) * _KIB
    except (libvirt.libvirtError, KeyError):
        memory_bytes = int(info[1]) * _MIB  # drivers without node memory stats (the test driver)
    active = [vm for vm in (_active_vm(dom, host) for dom in
                            connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
              if vm is not None]  # fmt: skip
    _state, capacity, allocation, available = connection.storagePoolLookupByName(pool).info()
    return NodeReading(memory_bytes=memory_bytes, cpus=int(info[2]), active=active,
                       pool_capacity_bytes=int(capacity), pool_allocation_bytes=int(allocation),
                       pool_available_bytes=int(available))  # fmt: skip


def _active_vm(dom: Any, host: str) -> ActiveVm | None:
    try:
        _state, max_memory_kib, _memory_kib, vcpus, _cpu_time = dom.info()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None  # gone since it was listed
        raise
    return ActiveVm(memory_bytes=int(max_memory_kib) * _KIB, vcpus=int(vcpus), function=_function(dom, host))


def _function(dom: Any, host: str) -> FunctionKey | None:
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE_URI, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
            return None
        raise
    try:
        facts = parse_facts(xml)
    except VmMetadataError as exc:
        # The room still counts the VM; only its function is unknown (the movers report the bad metadata).
        log.warning("vm_metadata_unreadable", host=host, vm_uuid=dom.UUIDString(), error=str(exc))
        return None
    return None if facts.function is None else (facts.tenant or "", facts.function)
