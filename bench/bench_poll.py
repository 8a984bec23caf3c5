"""Measure one monitor poll (64 hwmon channels + 8 memory controllers): CPU time per poll and process RSS.

Run: `.venv/bin/python bench/bench_poll.py [--polls N]`. The fake /sys tree is built in a temporary directory
in the exact kernel format. The baseline, measured in the same run, is the bare cost of reading the same
attribute files once each with os.open/os.read, so the ratio shows what parsing and the detector add.
The RSS printed is this bench's own process; the running daemon's, as an operator reads it, is
bench/bench_footprint.py's.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitors.detector import Detector
from monitors.settings import MonitorsSettings
from monitors.sources import EdacSource, HwmonSource, SourcePoller

CHIPS, CHANNELS_PER_CHIP, CONTROLLERS, DIMMS_PER_CONTROLLER = 8, 8, 8, 4
GOAL_CPU_MS, GOAL_RSS_MB = 2.0, 60.0


def build_tree(root: Path) -> list[Path]:
    """coretemp-like chips behind platform devices, skx-like controllers with dimmN; returns every file."""
    files: list[Path] = []

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        files.append(path)

    (root / "bus" / "platform").mkdir(parents=True)
    (root / "class" / "hwmon").mkdir(parents=True)
    for chip in range(CHIPS):
        device = root / "devices" / "platform" / f"coretemp.{chip}"
        hw = device / "hwmon" / f"hwmon{chip}"
        device.mkdir(parents=True)
        os.symlink(os.path.relpath(root / "bus" / "platform", device), device / "subsystem")
        write(hw / "name", "coretemp")
        os.symlink(os.path.relpath(device, hw), hw / "device")
        os.symlink(os.path.relpath(hw, root / "class" / "hwmon"), root / "class" / "hwmon" / f"hwmon{chip}")
        for channel in range(1, CHANNELS_PER_CHIP + 1):
            write(hw / f"temp{channel}_label", f"Core {channel - 1}")
            write(hw / f"temp{channel}_input", str(40000 + channel * 1000))
            write(hw / f"temp{channel}_max", "84000")
            write(hw / f"temp{channel}_crit", "94000")
            write(hw / f"temp{channel}_crit_alarm", "0")
    for index in range(CONTROLLERS):
        mc = root / "devices" / "system" / "edac" / "mc" / f"mc{index}"
        for name in ("ce_count", "ue_count", "ce_noinfo_count", "ue_noinfo_count"):
            write(mc / name, "0")
        write(mc / "mc_name", f"Skylake Socket#{index // 2} IMC#{index % 2}")
        for dimm in range(DIMMS_PER_CONTROLLER):
            write(mc / f"dimm{dimm}" / "dimm_label", f"CPU_SrcID#{index}_MC#0_Chan#{dimm}_DIMM#0")
            write(mc / f"dimm{dimm}" / "dimm_ce_count", "0")
            write(mc / f"dimm{dimm}" / "dimm_ue_count", "0")
    return files


def cpu_ms_per_call(function: object, calls: int) -> float:
    assert callable(function)
    function()  # warm caches and the detector's state
    start = time.process_time()
    for _ in range(calls):
        function()
    return (time.process_time() - start) * 1000.0 / calls


def rss_mb() -> tuple[float, float]:
    """Current (VmRSS) and peak RSS of this process in MiB."""
    current = 0.0
    for text in Path("/proc/self/status").read_text().splitlines():
        if text.startswith("VmRSS:"):
            current = int(text.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return current, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=500)
    parser.add_argument(
        "--service-imports",
        action="store_true",
        help="also import the service's composition root (libvirt, pika, APScheduler) so RSS is the daemon's",
    )
    args = parser.parse_args()
    if args.service_imports:
        import importlib

        importlib.import_module("evacuator.wiring.runtime")
    with tempfile.TemporaryDirectory(prefix="evacuator-bench-") as tmp:
        root = Path(tmp)
        files = build_tree(root)

        def baseline() -> None:
            for path in files:
                fd = os.open(path, os.O_RDONLY)
                os.read(fd, 4096)
                os.close(fd)

        poller = SourcePoller([HwmonSource(root), EdacSource(root)])
        detector = Detector(MonitorsSettings().to_policy())
        clock = [datetime(2026, 1, 1, tzinfo=UTC)]
        snapshot = poller.poll()
        assert len(snapshot.temperatures) == CHIPS * CHANNELS_PER_CHIP and not snapshot.faults
        assert len(snapshot.memory_controllers) == CONTROLLERS

        def poll_and_judge() -> None:
            clock[0] += timedelta(seconds=10)
            detector.observe(poller.poll(), clock[0])

        base_ms = cpu_ms_per_call(baseline, args.polls)
        read_ms = cpu_ms_per_call(poller.poll, args.polls)
        detect_ms = cpu_ms_per_call(lambda: detector.observe(snapshot, clock[0]), args.polls)
        total_ms = cpu_ms_per_call(poll_and_judge, args.polls)
        current, peak = rss_mb()
    print(
        f"tree: {CHIPS * CHANNELS_PER_CHIP} hwmon channels, {CONTROLLERS} memory controllers,"
        f" {len(files)} files"
    )
    print(f"baseline (bare os.open/read of every file): {base_ms:.3f} ms CPU per poll")
    print(
        f"read (hwmon + edac sources):                {read_ms:.3f} ms  ({read_ms / base_ms:.1f}x baseline)"
    )
    print(
        f"detector.observe alone:                     {detect_ms:.3f} ms"
        f"  ({detect_ms / base_ms:.1f}x baseline)"
    )
    print(
        f"poll + detector:                            {total_ms:.3f} ms  ({total_ms / base_ms:.1f}x baseline)"
        f"  goal <= {GOAL_CPU_MS} ms: {'met' if total_ms <= GOAL_CPU_MS else 'MISSED'}"
    )
    print(
        f"RSS now {current:.1f} MiB, peak {peak:.1f} MiB"
        f"  goal <= {GOAL_RSS_MB} MB: {'met' if peak <= GOAL_RSS_MB else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
