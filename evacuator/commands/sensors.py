"""`evacuator sensors`: every current reading of every source, as text or one JSON object."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evacuator.settings import load_settings
from monitors.report import build_sensor_report, format_sensor_report
from monitors.settings import MonitorsSettings
from monitors.sources import SourcePoller, build_sources


def monitors_settings(config: str | None) -> MonitorsSettings:
    """The monitors' part of a settings file, or the built-in defaults without one."""
    return MonitorsSettings() if config is None else load_settings(Path(config)).monitors


def main(args: argparse.Namespace) -> int:
    monitors = monitors_settings(args.config)
    if args.sysfs_root is not None:
        monitors = monitors.model_copy(update={"sysfs_root": Path(args.sysfs_root)})
    report = build_sensor_report(SourcePoller(build_sources(monitors)).poll(), sysfs_root=monitors.sysfs_root)
    print(json.dumps(report, indent=2) if args.json else format_sensor_report(report))
    return 0
