"""The data channel alone, without libvirt: 1 GiB sent durably to a receiving daemon in a process of its own,
against cp + sync of the same file, and NBD with TLS (nbdcopy into qemu-nbd or nbdkit) when installed.

Run: `PYTHONPATH=. .venv/bin/python bench/bench_channel.py [--mib 1024] [--trials 6]` on the file system of
the storage pools. Each trial writes a fresh dense source file, copies it once uncounted (the first copy
after writing a file runs slower here), then each contender in an order that rotates; medians are compared.
The channel's trial is what a mover does: read ahead on a thread and block-digested (copy_volume), sent
with TLS, written and fsynced by the receiver, which digests its file afterwards (counted separately, as
bench (a)'s "with verification"). It isolates evacuator/transfer/ for profiling (`py-spy record`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.nbd_tls import nbd_available, nbd_copy_seconds
from evacuator.logs import configure_logging
from evacuator.transfer.chunks import close_chunks
from evacuator.transfer.digests import BlockDigest, block_digest_of_chunks
from evacuator.transfer.files import file_chunks, prefetched
from evacuator.transfer.receiver import VolumeReceiver
from evacuator.transfer.sender import DataChannelClient
from evacuator.transfer.tickets import ReceivableFile
from evacuator.transfer.wire import Encryption, ReceiveRequest, ReceiveTicket, server_tls

MIB = 1 << 20
POOL = "bench"


def serve(directory: Path) -> None:
    """The receiving daemon: for each volume name on stdin, a fresh file and a ticket (JSON) on stdout."""

    def locate(pool: str, volume: str) -> ReceivableFile:
        return ReceivableFile(path=directory / volume, limit_bytes=1 << 40)

    receiver = VolumeReceiver(
        host="host-b",
        locate=locate,
        listen_address="127.0.0.1",
        port=0,
        tls=server_tls("host-b"),
        allow_from=("127.0.0.1",),
    )
    receiver.start()
    for line in sys.stdin:
        volume = line.strip()
        (directory / volume).touch()
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool=POOL, volume=volume))
        print(ticket.model_dump_json(), flush=True)
    receiver.close()


class ProcessTickets:
    """Tickets from the receiving process, over its stdin and stdout (the broker's leg, in the bench)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._process = process

    def cpu_seconds(self) -> float:
        """The receiving process's CPU time so far (user + system, all its threads)."""
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def ticket(self, request: ReceiveRequest, *, timeout_seconds: float) -> ReceiveTicket | str:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(request.volume + "\n")
        self._process.stdin.flush()
        return ReceiveTicket.model_validate(json.loads(self._process.stdout.readline()))


@contextmanager
def receiving_process(directory: Path) -> Iterator[ProcessTickets]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_channel", "--serve", str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield ProcessTickets(process)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(30)


CPU_SECONDS: dict[str, list[float]] = {"mover": [], "receiver": []}


def channel_seconds(client: DataChannelClient, tickets: ProcessTickets, source: Path, volume: str) -> float:
    """Seconds until the receiver answered that the copy is durable, as copy_volume sends it."""
    began, cpu, receiver_cpu = time.monotonic(), time.process_time(), tickets.cpu_seconds()
    sent = BlockDigest()
    ahead = prefetched(sent.tap(file_chunks(source)))
    try:
        written = client.send(
            host="host-b", uri="qemu+tls://127.0.0.1/system", pool=POOL, volume=volume, chunks=ahead
        )
    finally:
        close_chunks(ahead)
    seconds = time.monotonic() - began
    CPU_SECONDS["mover"].append(time.process_time() - cpu)
    CPU_SECONDS["receiver"].append(tickets.cpu_seconds() - receiver_cpu)
    if written is None:
        raise SystemExit("the data channel did not take the copy")
    sent.hexdigest()
    return seconds


def _nbd_seconds(tool: str, received: Path, work: Path, source: Path, name: str) -> float:
    return nbd_copy_seconds(tool, source, received / name, work)


def cp_seconds(source: Path, target: Path) -> float:
    began = time.monotonic()
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)
    subprocess.run(["sync"], check=True)
    return time.monotonic() - began


def dense_file(path: Path, size_bytes: int) -> None:
    block = os.urandom(4 * MIB)
    with path.open("wb") as file:
        for _ in range(size_bytes // len(block)):
            file.write(block)
    subprocess.run(["sync"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--encryption", choices=("tls", "none"), default="tls")
    parser.add_argument("--only", default="", help="comma-separated contenders (default: all available)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(level="warning")  # to stderr: stdout carries the tickets, and the results
    if args.serve is not None:
        serve(args.serve)
        return
    base = Path(tempfile.mkdtemp(prefix="bench-channel-", dir=args.dir))
    encryption: Encryption = args.encryption
    received = base / "received"
    received.mkdir()
    contenders: dict[str, Callable[[Path, str], float]] = {}
    try:
        with receiving_process(received) as tickets:
            client = DataChannelClient(tickets, encryption=encryption)
            contenders["cp"] = lambda source, name: cp_seconds(source, base / name)
            contenders["channel"] = lambda source, name: channel_seconds(client, tickets, source, name)
            for tool in nbd_available():
                contenders[tool] = functools.partial(_nbd_seconds, tool, received, base / "nbd")
            if args.only:
                contenders = {k: v for k, v in contenders.items() if k in [*args.only.split(","), "cp"]}
            runs: dict[str, list[float]] = {name: [] for name in contenders}
            order = list(contenders)
            for trial in range(args.trials):
                source = base / f"source{trial}"
                dense_file(source, args.mib * MIB)
                cp_seconds(source, base / "warm")
                (base / "warm").unlink()
                turn = order[trial % len(order) :] + order[: trial % len(order)]
                for name in turn:
                    runs[name].append(contenders[name](source, f"{name}{trial}"))
                    target = received / f"{name}{trial}" if name != "cp" else base / f"{name}{trial}"
                    if name != "cp" and block_digest_of_chunks(file_chunks(target)) != \
                            block_digest_of_chunks(file_chunks(source)):  # fmt: skip
                        raise SystemExit(f"{name} copied {source} wrongly")
                    target.unlink()
                source.unlink()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    cp = statistics.median(runs["cp"])
    for name, values in runs.items():
        median = statistics.median(values)
        print(
            f"{name:10} {median:.2f} s ({args.mib / median:.0f} MiB/s), ratio to cp+sync "
            f"{cp / median:.2f}; trials {'/'.join(f'{v:.2f}' for v in values)}"
        )
    for side, values in CPU_SECONDS.items():
        if values:
            print(
                f"channel's {side} CPU per GiB: {statistics.median(values) * 1024 / args.mib:.2f} s "
                f"(trials {'/'.join(f'{v:.2f}' for v in values)})"
            )


if __name__ == "__main__":
    main()
