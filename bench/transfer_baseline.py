"""Baselines: the same disks copied and verified alone by the mover's code, and by cp or cat | dd.

"Alone" means through the mover's own copy path (copy_volume: read ahead on a thread, block-digested on
the way, written through libvirt; then digested by the destination's daemon after it flushed the copy),
as many at a time as the caps allow, but with nothing else: no shutdown, define, start or clean-up. What
an evacuation takes beyond that is what the engine adds, which is what goal (c) bounds.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from evacuator.hypervisor.model import Hypervisor
from evacuator.migrate.volume_copy import copy_volume

OpenHost = Callable[[], AbstractContextManager[Hypervisor]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfers:
    """How long copying and verifying `data_bytes` took, `streams` volumes at a time."""

    seconds: float
    data_bytes: int
    streams: int

    @property
    def bytes_per_second(self) -> float:
        return self.data_bytes / self.seconds


def _copy_and_verify(source: Hypervisor, destination: Hypervisor, pool: str, volume: str) -> int:
    info = source.find_volume(pool, volume)
    if info is None:
        raise SystemExit(f"{source.name} has no volume {pool}/{volume}")
    if destination.find_volume(pool, volume) is not None:
        raise SystemExit(f"{destination.name} already holds {pool}/{volume}")
    copied = copy_volume(source, destination, info, limit_seconds=3600, clock=lambda: datetime.now(UTC))
    if destination.volume_digest(pool, volume) != copied.sent_digest:
        raise SystemExit(f"{pool}/{volume} differs after its copy to {destination.name}")
    return info.allocation_bytes


def transfer_alone(open_source: OpenHost, open_destination: OpenHost, pool: str, volumes: Sequence[str],
                   *, streams: int, stagger_seconds: float = 0.0) -> Transfers:
    """Copies and verifies `volumes`, `streams` at a time (each stream with its own connections, as each
    move of the engine has), then deletes the copies (not timed)."""
    waiting: queue.Queue[str] = queue.Queue()
    for volume in volumes:
        waiting.put(volume)
    copied: list[int] = []
    failures: list[BaseException] = []

    def stream(delay_seconds: float) -> None:
        time.sleep(delay_seconds)
        try:
            with open_source() as source, open_destination() as destination:
                while True:
                    try:
                        volume = waiting.get_nowait()
                    except queue.Empty:
                        return
                    copied.append(_copy_and_verify(source, destination, pool, volume))
        except BaseException as exc:  # re-raised on the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=stream, args=(n * stagger_seconds,), name=f"bench-transfer-{n}")
               for n in range(streams)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - began
    with open_destination() as destination:
        for volume in volumes:
            if destination.find_volume(pool, volume) is not None:
                destination.delete_volume(pool, volume)
    if failures:
        raise failures[0]
    return Transfers(seconds=seconds, data_bytes=sum(copied), streams=streams)


def cp_many_seconds(sources: list[Path], scratch: Path) -> float:
    """`cp` of the files into one directory on the same disk, then `sync`: the disk's sustained speed."""
    scratch.mkdir()
    subprocess.run(["sync"], check=True)
    began = time.monotonic()
    subprocess.run(["cp", "--sparse=always", *map(str, sources), str(scratch)], check=True)
    subprocess.run(["sync"], check=True)
    seconds = time.monotonic() - began
    shutil.rmtree(scratch)
    return seconds


def piped_many_seconds(sources: list[Path], scratch: Path) -> float:
    """`cat | dd` of each file into one directory on the same disk, then `sync`: the least any copy pays whose
    bytes cross from one process to another (as a copy between hosts must, through a socket)."""
    scratch.mkdir()
    subprocess.run(["sync"], check=True)
    began = time.monotonic()
    for source in sources:
        with subprocess.Popen(["cat", str(source)], stdout=subprocess.PIPE) as cat:
            subprocess.run(["dd", f"of={scratch / source.name}", "bs=256k", "iflag=fullblock", "status=none"],
                           stdin=cat.stdout, check=True)
        if cat.returncode != 0:
            raise SystemExit(f"cat {source} failed")
    subprocess.run(["sync"], check=True)
    seconds = time.monotonic() - began
    shutil.rmtree(scratch)
    return seconds


def cp_seconds(source: Path, scratch: Path) -> float:
    """`cp` + `sync` of one file (into the directory `scratch`, made and removed here)."""
    return cp_many_seconds([source], scratch)
