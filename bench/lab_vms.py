"""The bench's VMs on lab hosts: disks of random bytes (nothing is a hole), defined, started, stopped."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import libvirt

from evacuator.hypervisor.facts import VmFacts
from evacuator.lab.hosts import LabHost
from evacuator.lab.vms import domain_xml

MIB = 1 << 20
GIB = 1 << 30


def write_file(path: Path, data_bytes: int, capacity_bytes: int) -> None:
    """Non-zero data (so nothing is a hole) from offset 0, the rest of the capacity sparse."""
    block = os.urandom(MIB)
    with path.open("wb") as out:
        for _ in range(data_bytes // MIB):
            out.write(block)
        out.truncate(capacity_bytes)
        out.flush()
        os.fsync(out.fileno())


def precondition(directory: Path, gib: int) -> float:
    """Writes `gib` GiB into `directory` and deletes them; returns the seconds it took. This machine's
    virtual disk is thin: the first write to a region of it runs at a fifth of the speed of any later write
    (1 GiB with fsync: 2.5-3.5 s into fresh blocks, 0.55 s into blocks written before and freed). Whichever
    copy landed on fresh blocks lost, and `cp` into a scratch file it deletes after each trial never did.
    After this, the bench's files land on blocks the disk has already written, for every contender alike."""
    directory.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    for index in range(gib):
        write_file(directory / f"fill{index}", GIB, GIB)
    for index in range(gib):
        (directory / f"fill{index}").unlink()
    os.sync()
    return time.monotonic() - began


def define_vm(host: LabHost, name: str, data_bytes: int, capacity_bytes: int, *, start: bool) -> str:
    write_file(host.pool_path / f"{name}.raw", data_bytes, capacity_bytes)
    conn = libvirt.open(host.uri)
    try:
        conn.storagePoolLookupByName(host.pool).refresh(0)
        high, low = divmod(sum(name.encode()) % 65536, 256)
        mac = f"52:54:00:be:{high:02x}:{low:02x}"
        dom = conn.defineXML(domain_xml(name=name, pool=host.pool, volume=f"{name}.raw", mac=mac,
                                        facts=VmFacts(tenant="bench")))
        if start:
            dom.create()
        return str(dom.UUIDString())
    finally:
        conn.close()


def power(host: LabHost, uuids: Iterable[str], *, on: bool) -> None:
    conn = libvirt.open(host.uri)
    try:
        for uuid in uuids:
            domain = conn.lookupByUUIDString(uuid)
            if on:
                domain.create()
            else:
                domain.destroy()  # the lab's guests ignore a shutdown request
    finally:
        conn.close()
