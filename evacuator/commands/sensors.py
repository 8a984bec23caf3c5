"""`evacuator sensors`: every current reading of every source, as text or one JSON object.

Exit 0 when every enabled source was read (or has nothing to read on this host: `absent`), 1 when one failed
(the report is printed all the same, and stderr names each failed source and why), 2 for a settings file
that cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evacuator.errors import ConfigError
from evacuator.settings import load_settings
from monitors.readings import HostSnapshot, SourceState
from monitors.report import build_sensor_report, format_sensor_report
from monitors.settings import MonitorsSettings
from monitors.sources import SourcePoller, build_sources

EXIT_SOURCE_FAILED = 1
EXIT_BAD_CONFIG = 2


def monitors_settings(config: str | None) -> MonitorsSettings:
    """The monitors' part of a settings file, or the built-in defaults without one."""
    return MonitorsSettings() if config is None else load_settings(Path(config)).monitors


def failures(snapshot: HostSnapshot) -> list[str]:
    """One line per source that failed: which, and why (its faults are in the report when it says none)."""
    return [f"sensor source {s.source} failed: {s.detail or 'no reading (its faults are in the report)'}"
            for s in snapshot.sources if s.state is SourceState.FAILED]  # fmt: skip


def main(args: argparse.Namespace) -> int:
    try:
        monitors = monitors_settings(args.config)
    except ConfigError as exc:
        print(f"evacuator: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.sysfs_root is not None:
        monitors = monitors.model_copy(update={"sysfs_root": Path(args.sysfs_root)})
    snapshot = SourcePoller(build_sources(monitors)).poll()
    report = build_sensor_report(snapshot, sysfs_root=monitors.sysfs_root)
    print(json.dumps(report, indent=2) if args.json else format_sensor_report(report))
    sys.stdout.flush()  # the report first, then what failed, when both go to one terminal
    failed = failures(snapshot)
    for line in failed:
        print(f"evacuator: {line}", file=sys.stderr)
    return EXIT_SOURCE_FAILED if failed else 0
