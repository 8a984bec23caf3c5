"""How often a receiving daemon should start writeback: 1 GiB written and made durable (fsync) on this disk,
starting writeback (`start_writeback`, sync_file_range WRITE) every N MiB, against no early writeback.

Run: `.venv/bin/python bench/bench_writeback.py [--dir /var/tmp] [--rounds 10]`, on the file system of the
storage pools. Each round writes one fresh file per variant, in an order that rotates from round to round
(the disk's speed drifts), and deletes it; medians are compared. The baseline, measured in the same run, is
the same write with writeback left to the kernel until the fsync. It isolates the disk's side of
evacuator/transfer/receiver.py (WRITEBACK_EVERY_BYTES) from the network and the sender. About 2 minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from evacuator.transfer.files import start_writeback
from evacuator.transfer.receiver import WRITEBACK_EVERY_BYTES

MIB = 1 << 20
FRAME_BYTES = MIB  # as the receiver writes what one data frame carries


def write_durably(path: Path, data: bytes, total_bytes: int, every_bytes: int | None) -> float:
    """Seconds to write `total_bytes` (repeating `data`) into a new file and fsync it."""
    began = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        unflushed_from = 0
        for offset in range(0, total_bytes, len(data)):
            os.pwrite(fd, data, offset)
            end = offset + len(data)
            if every_bytes is not None and end - unflushed_from >= every_bytes:
                start_writeback(fd, unflushed_from, end - unflushed_from)
                unflushed_from = end
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--mib", type=int, default=1024, help="written per trial")
    parser.add_argument("--every-mib", default="8,16,32,64,128", help="writeback windows to try")
    args = parser.parse_args()
    windows = [int(value) * MIB for value in args.every_mib.split(",")]
    variants: list[int | None] = [None, *windows]
    data = os.urandom(FRAME_BYTES)  # random: no layer below can shortcut zeros
    runs: dict[int | None, list[float]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="bench-writeback-", dir=args.dir) as scratch:
        for round_index in range(args.rounds):
            turn = round_index % len(variants)
            for variant in variants[turn:] + variants[:turn]:
                path = Path(scratch) / f"r{round_index}-{variant}"
                os.sync()  # nothing of the previous trial still being written
                runs[variant].append(write_durably(path, data, args.mib * MIB, variant))
                path.unlink()
    baseline = statistics.median(runs[None])
    print(f"{args.mib} MiB written and fsynced, median of {args.rounds}; baseline (no early writeback): "
          f"{baseline:.2f} s (trials {'/'.join(f'{s:.2f}' for s in runs[None])})")
    for window in windows:
        median = statistics.median(runs[window])
        mark = "  <- the receiver's WRITEBACK_EVERY_BYTES" if window == WRITEBACK_EVERY_BYTES else ""
        print(f"  writeback every {window // MIB:>4} MiB: {median:.2f} s, {baseline / median:.2f}x the "
              f"baseline's speed (trials {'/'.join(f'{s:.2f}' for s in runs[window])}){mark}")


if __name__ == "__main__":
    main()
