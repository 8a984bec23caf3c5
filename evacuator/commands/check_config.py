"""`evacuator check-config`: validates a settings file and names the file and each bad field."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evacuator.errors import ConfigError
from evacuator.settings import load_settings


def main(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(Path(args.file or args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.file or args.config}: ok (host {settings.host.name}, {len(settings.peers)} peer(s))")
    return 0
