"""`evacuator run`: the daemon, as systemd runs it; exits 1 on invalid settings or a failed start-up."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evacuator.daemon import run_daemon
from evacuator.errors import ConfigError
from evacuator.settings import load_settings


def main(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(Path(args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return run_daemon(settings)
