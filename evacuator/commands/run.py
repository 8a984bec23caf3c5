"""`evacuator run`: the daemon, as systemd runs it.

A start that fails (a settings file it cannot use, libvirt or the broker unreachable, no working sensor
source) is logged as one `startup_failed` event, in the log format the settings ask for (JSON under systemd or
in a pipe with `auto`), with `stage` and `reason` fields and no traceback, and exits 1 so systemd restarts it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from evacuator.daemon import run_daemon, startup_failed
from evacuator.errors import ConfigError
from evacuator.logs import LogFormat, configure_logging
from evacuator.settings import LoggingSettings, load_settings


def logging_asked(path: Path) -> tuple[LogFormat, str]:
    """The log format and level a settings file asks for, as far as it can be read: an unusable file still
    gets its error in the format its reader expects; the defaults (auto, info) if not even that reads."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        section = data.get("logging") if isinstance(data, dict) else None
        chosen = LoggingSettings.model_validate(section if isinstance(section, dict) else {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, OverflowError, RecursionError):
        chosen = LoggingSettings()  # pydantic's ValidationError is a ValueError
    return chosen.format, chosen.level


def main(args: argparse.Namespace) -> int:
    path = Path(args.config)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        fmt, level = logging_asked(path)
        configure_logging(fmt, level=level)
        return startup_failed("settings", str(exc), config=str(path))
    return run_daemon(settings, config_path=path)
