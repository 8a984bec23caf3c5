"""`evacuator hosts`: every host's state as this host hears it on the broker (the host view, README).

It listens as this host's broker user in the peers vhost for a little over one interval, or until this host
and every configured peer was heard, then prints each host's verdict, switches, room, running VMs, and the
sequence and age of its state; a state older than `host_view.stale_after_seconds` is marked stale (its host
counts as unknown: never a destination). Exit 0; 1 when the broker cannot be reached.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from evacuator.placement.view import Heard, as_seen
from evacuator.settings import Settings, load_settings
from evacuator.wiring.host_view import listener_for

_GIB = 1 << 30
# Past one interval, for a state published just before listening started to be followed by the next.
_LISTEN_MARGIN_SECONDS = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HostRow:
    """One host in the output; its JSON form is this (README, "Host view")."""

    host: str
    heard: bool  # false: a configured host this listen did not hear (every other field is empty)
    verdict: str | None  # as placement sees it: "unknown" once stale, else as published
    published_verdict: str | None
    reasons: list[str]
    stale: bool
    quarantined: bool | None
    maintenance: bool | None
    accepting: bool | None
    memory_free_bytes: int | None
    memory_capacity_bytes: int | None
    vcpus_free: int | None
    vcpus_capacity: int | None
    disk_free_bytes: int | None  # the storage pool's available bytes
    disk_capacity_bytes: int | None
    disk_allocation_bytes: int | None
    running_vms: int | None
    functions: list[list[str]]
    libvirt_uri: str | None  # as it publishes it (host.advertised_libvirt_uri): reachable with scope cloud
    incarnation: str | None
    sequence: int | None
    age_seconds: float | None  # since this listener received it


def rows(heard: Sequence[Heard], expected: Sequence[str], now: datetime, stale_after_seconds: float
         ) -> list[HostRow]:  # fmt: skip
    found = {h.host: _row(h, now, stale_after_seconds) for h in heard}
    missing = {name: _unheard(name) for name in expected if name not in found}
    return [row for _, row in sorted({**found, **missing}.items())]


def _row(heard: Heard, now: datetime, stale_after_seconds: float) -> HostRow:
    state = heard.state
    seen = as_seen(heard, now, stale_after_seconds)
    return HostRow(
        host=state.name, heard=True, verdict=str(seen.verdict), published_verdict=str(state.verdict),
        reasons=list(heard.reasons), stale=not state.fresh(now, stale_after_seconds),
        quarantined=state.quarantined, maintenance=state.maintenance, accepting=state.accepting,
        memory_free_bytes=state.free.memory_bytes, memory_capacity_bytes=state.capacity.memory_bytes,
        vcpus_free=state.free.vcpus, vcpus_capacity=state.capacity.vcpus,
        disk_free_bytes=state.free.disk_bytes, disk_capacity_bytes=state.capacity.disk_bytes,
        disk_allocation_bytes=heard.disk_allocation_bytes, running_vms=heard.running_vms,
        functions=[list(key) for key in sorted(state.functions)], libvirt_uri=heard.libvirt_uri,
        incarnation=heard.incarnation,
        sequence=heard.sequence, age_seconds=round((now - state.seen_at).total_seconds(), 3),
    )  # fmt: skip


def _unheard(name: str) -> HostRow:
    return HostRow(host=name, heard=False, verdict=None, published_verdict=None, reasons=[], stale=True,
                   quarantined=None, maintenance=None, accepting=None, memory_free_bytes=None,
                   memory_capacity_bytes=None, vcpus_free=None, vcpus_capacity=None, disk_free_bytes=None,
                   disk_capacity_bytes=None, disk_allocation_bytes=None, running_vms=None, functions=[],
                   libvirt_uri=None, incarnation=None, sequence=None, age_seconds=None)  # fmt: skip


def format_rows(found: Sequence[HostRow]) -> str:
    header = ("host", "verdict", "flags", "memory free/cap GiB", "vCPUs free/cap", "disk free/cap GiB", "VMs",
              "seq", "age s")
    table = [header, *(_cells(row) for row in found)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
             for line in table]  # fmt: skip
    lines += [f"{row.host}: {'; '.join(row.reasons)}" for row in found if row.reasons]
    return "\n".join(lines)


def _cells(row: HostRow) -> tuple[str, ...]:
    if not row.heard:
        return (row.host, "not heard", "", "", "", "", "", "", "")
    flags = [name for name, on in (("quarantined", row.quarantined), ("maintenance", row.maintenance),
                                   ("refusing", not row.accepting), ("STALE", row.stale)) if on]  # fmt: skip
    return (
        row.host, str(row.verdict), ",".join(flags) or "-",
        f"{_gib(row.memory_free_bytes)}/{_gib(row.memory_capacity_bytes)}",
        f"{row.vcpus_free}/{row.vcpus_capacity}",
        f"{_gib(row.disk_free_bytes)}/{_gib(row.disk_capacity_bytes)}",
        str(row.running_vms), str(row.sequence), f"{row.age_seconds:.1f}",
    )  # fmt: skip


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / _GIB:.1f}"


def listen(settings: Settings, *, seconds: float, clock: Callable[[], datetime]) -> list[Heard]:
    """The states heard within `seconds`, or until this host and every peer was heard."""
    subscriber = listener_for(settings, clock=clock)
    subscriber.start()
    try:
        subscriber.view.wait_for(_expected(settings), seconds)
    finally:
        subscriber.close()
    return subscriber.view.heard()


def _expected(settings: Settings) -> list[str]:
    return [settings.host.name, *(peer.name for peer in settings.peers)]


def run_hosts(settings: Settings, *, as_json: bool, seconds: float | None = None,
              clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> int:  # fmt: skip
    view = settings.host_view
    listened = view.interval_seconds + _LISTEN_MARGIN_SECONDS if seconds is None else seconds
    heard = listen(settings, seconds=listened, clock=clock)
    found = rows(heard, _expected(settings), clock(), view.stale_after)
    if as_json:
        print(json.dumps({"stale_after_seconds": view.stale_after, "listened_seconds": listened,
                          "hosts": [asdict(row) for row in found]}, indent=2))  # fmt: skip
    else:
        print(format_rows(found))
    return 0


def main(args: argparse.Namespace) -> int:
    return run_hosts(load_settings(Path(args.config)), as_json=args.json, seconds=args.listen_seconds)
