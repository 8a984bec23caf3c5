"""Downtime of a cold move with pre-copy during the window against a plain cold move, on real lab hosts.

Run: `PYTHONPATH=. .venv/bin/python bench/bench_downtime.py` as root. One run, both ways, at each level of
change: a running VM with a 1 GiB disk of random bytes and a 30 s window, during which a writer on its disk
file (the lab guests run no OS) rewrites 5% of the disk (then 0% and 25%, to show the curve) in whole 1 MiB
blocks spread over the window; at the window's end the engine moves it to host-b through host-b's daemon
(data channel, TLS by default as the setting's default), the guest ignoring its ACPI request and powered off
at the shutdown timeout.
- plain: today's cold move without any pre-copy (the disk copied once the guest is off);
- pre-copy: precopy_during_window (and during the shutdown), the defaults.
Downtime: the guest powered off (`vm_forced_off`) to running on the destination (the start step finished).
Bytes: what the move wrote to the destination in all (the journal's `bytes_copied`). Each destination disk's
sha256 is checked against the source's content at the window's end. Goal: downtime <= 0.2x the plain
move's, bytes <= 1.1x (disk + changed). First, where libvirt's checkpoints (dirty bitmaps) apply on this
machine, and what finding the changed blocks costs both ways where both do (bench/dirty_bitmaps.py).
Not run in CI (about five minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import libvirt
from structlog.testing import capture_logs

from bench.dirty_bitmaps import measure, probe_checkpoints
from bench.lab_peers import OpenPeer, peer_daemons
from bench.lab_vms import GIB, MIB, define_vm, precondition
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import Hypervisor
from evacuator.incident.planner import PlannedMove
from evacuator.lab.hosts import LabHost, LabHosts, free_port_pair
from evacuator.lab.vms import sha256_of_volume
from evacuator.logs import configure_logging
from evacuator.migrate.factory import MigrationTimings
from evacuator.moves.attempts import EngineConfig
from evacuator.moves.journal import Journal, read_journal
from evacuator.moves.state import MoveState
from evacuator.wiring.moves import assemble_engine

SHUTDOWN_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Moved:
    downtime_seconds: float
    bytes_sent: int
    changed_bytes: int
    reread_bytes: int  # read again once the guest was off (pre-copy only)
    patched_bytes: int  # written once the guest was off (pre-copy only)
    steps: str  # the seconds of each step after the guest was off


class Writer:
    """Rewrites distinct 1 MiB blocks of the disk file with new random bytes, evenly over `seconds`."""

    def __init__(self, path: Path, fraction: float, disk_bytes: int, seed: int) -> None:
        rng = random.Random(seed)
        blocks = disk_bytes // MIB
        self._offsets = [index * MIB for index in rng.sample(range(blocks), round(blocks * fraction))]
        self._path = path
        self._rng = rng

    def run(self, seconds: float) -> int:
        began = time.monotonic()
        with self._path.open("r+b") as disk:
            for number, offset in enumerate(self._offsets):
                time.sleep(max(0.0, began + seconds * number / len(self._offsets) - time.monotonic()))
                os.pwrite(disk.fileno(), self._rng.randbytes(MIB), offset)
        time.sleep(max(0.0, began + seconds - time.monotonic()))
        return len(self._offsets) * MIB


def one_move(host_a: LabHost, host_b: LabHost, open_peer: OpenPeer, state: Path, *, name: str,
             precopy: bool, fraction: float, window_seconds: float) -> Moved:  # fmt: skip
    uuid = define_vm(host_a, name, GIB, GIB, start=True)
    source_file = host_a.pool_path / f"{name}.raw"

    @contextmanager
    def open_host(host: str) -> Iterator[Hypervisor]:
        if host == "host-a":
            with open_libvirt_host("host-a", host_a.uri, host_a.pool, local_files=True) as opened:
                yield opened
        else:
            with open_peer(host_b) as peer:
                yield peer

    config = EngineConfig(host="host-a", peers=("host-b",), precopy_during_shutdown=precopy,
                          precopy_during_window=precopy)  # fmt: skip
    journal_path = state / f"{name}.sqlite"
    with Journal(journal_path) as journal, open_libvirt_host("host-a", host_a.uri, host_a.pool) as own, \
            capture_logs(processors=[_stamp]) as logs:  # fmt: skip
        engine = assemble_engine(config, MigrationTimings(shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_SECONDS),
                                 journal=journal, hypervisor=own, open_host=open_host,
                                 clock=lambda: datetime.now(UTC), sleep=time.sleep)  # fmt: skip
        deadline = datetime.now(UTC) + timedelta(seconds=window_seconds)
        engine.plan([PlannedMove(vm_uuid=uuid, vm_name=name, tenant="bench",
                                 window_seconds=int(window_seconds), deadline=deadline)],
                    may_restart_on_source=True)  # fmt: skip
        engine.start(timer_pending=lambda _: True)
        engine.mark(uuid, MoveState.WAITING)  # the window opens (the service does this)
        changed = Writer(source_file, fraction, GIB, seed=len(name)).run(window_seconds)
        expected = _sha256(source_file)  # the guest writes no more: this is what must arrive
        engine.submit(uuid)  # the window's timer fires
        engine.wait_idle(600)
        engine.stop()
        record = journal.get(uuid)
    assert record is not None and record.state is MoveState.DONE, record
    assert sha256_of_volume(host_b.uri, host_b.pool, f"{name}.raw") == expected, "the copy differs"
    off = next(e["monotonic"] for e in logs if e["event"] == "vm_forced_off")
    running = next(e["monotonic"] for e in logs
                   if e["event"] == "move_step_finished" and e.get("step") == "start")  # fmt: skip
    sent = next(e.bytes_copied for e in read_journal(journal_path).entries if e.state is MoveState.DONE)
    finished = [e for e in logs if e["event"] == "precopy_finished"]
    _remove(host_b, uuid, f"{name}.raw")
    return Moved(downtime_seconds=running - off, bytes_sent=sent or 0, changed_bytes=changed,
                 reread_bytes=sum(e["reread_bytes"] for e in finished),
                 patched_bytes=sum(e["patched_bytes"] for e in finished),
                 steps=_steps(logs, off))  # fmt: skip


def _steps(logs: list[MutableMapping[str, Any]], off: float) -> str:
    """Each step that ended after the guest was off, with its seconds after it (the quiesce's: from off)."""
    ended = [e for e in logs if e["event"] == "move_step_finished" and e["monotonic"] >= off]
    spans, last = [], off
    for event in ended:
        spans.append(f"{event['step']} {event['monotonic'] - last:.2f}")
        last = event["monotonic"]
    return ", ".join(spans)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as disk:
        while block := disk.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def _remove(host: LabHost, uuid: str, volume: str) -> None:
    with open_libvirt_host(host.name, host.uri, host.pool) as opened:
        opened.destroy_vm(uuid)
        opened.undefine_vm(uuid)
        opened.delete_volume(host.pool, volume)


def _stamp(logger: object, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["monotonic"] = time.monotonic()
    return event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window-seconds", type=float, default=30.0)
    parser.add_argument("--data-channel", choices=("auto", "tls", "none"), default="tls")
    parser.add_argument("--precondition-gib", type=int, default=4,
                        help="GiB written and deleted first, so no copy pays the thin disk's first writes")
    args = parser.parse_args()
    configure_logging()  # to stderr: stdout carries only the results
    base = Path(tempfile.mkdtemp(prefix="bench-downtime-", dir="/var/tmp"))
    lab = LabHosts(base / "hosts", names=("host-a", "host-b"), base_port=free_port_pair())
    try:
        if args.precondition_gib:
            precondition(base / "precondition", args.precondition_gib)
        host_a, host_b = lab.start()
        print(f"libvirt {libvirt.getVersion()} checkpoints (dirty bitmaps): {probe_checkpoints(host_a)}")
        print(measure(host_a, GIB, 0.05))
        with peer_daemons((host_a, host_b), base, args.data_channel) as peers:
            for fraction in (0.05, 0.0, 0.25):
                runs = {}
                for precopy in (False, True):
                    name = f"vm{round(fraction * 100)}-{'pre' if precopy else 'plain'}"
                    runs[precopy] = one_move(host_a, host_b, peers.channel, base, name=name, precopy=precopy,
                                             fraction=fraction, window_seconds=args.window_seconds)
                _report(fraction, runs[False], runs[True])
    finally:
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)


def _report(fraction: float, plain: Moved, pre: Moved) -> None:
    ideal = GIB + pre.changed_bytes
    goals = " (goals <= 0.2, <= 1.1)" if fraction == 0.05 else ""
    ratio = pre.downtime_seconds / plain.downtime_seconds
    print(f"{fraction:.0%} changed ({pre.changed_bytes // MIB} MiB): downtime plain "
          f"{plain.downtime_seconds:.2f} s, pre-copy {pre.downtime_seconds:.2f} s, ratio {ratio:.2f}; "
          f"bytes sent plain {plain.bytes_sent / MIB:.0f} MiB, pre-copy {pre.bytes_sent / MIB:.0f} MiB, "
          f"{pre.bytes_sent / ideal:.2f}x (disk + changed){goals}; once off the pre-copy read "
          f"{pre.reread_bytes / MIB:.0f} MiB again and wrote {pre.patched_bytes / MIB:.1f} MiB.\n"
          f"    seconds after off, plain: {plain.steps}; pre-copy: {pre.steps}")


if __name__ == "__main__":
    main()
