"""`evacuator simulate`: replays a trace of readings through the detector of a settings file's policy."""

from __future__ import annotations

import argparse
from pathlib import Path

from evacuator.commands.sensors import monitors_settings
from evacuator.errors import ConfigError
from monitors.replay import format_timeline, replay_lines


def main(args: argparse.Namespace) -> int:
    policy = monitors_settings(args.config).to_policy()
    try:
        lines = Path(args.trace).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{args.trace}: cannot read trace: {exc.strerror}") from exc
    print(format_timeline(replay_lines(lines, policy), only_changes=not args.all))
    return 0
