"""The `evacuator` command line: parses arguments and hands each subcommand to its module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from evacuator.errors import ConfigError, EvacuatorError
from evacuator.settings import load_settings


def _check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(Path(args.file))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.file}: ok (host {settings.host.name}, {len(settings.peers)} peer(s))")
    return 0


def _run(args: argparse.Namespace) -> int:
    from evacuator.daemon import run_daemon

    try:
        settings = load_settings(Path(args.config))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    return run_daemon(settings)


def _demo(args: argparse.Namespace) -> int:
    from evacuator.demo import run_demo

    return run_demo(state_dir=Path(args.state_dir) if args.state_dir else None, keep=args.keep)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evacuator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", default="/etc/evacuator/evacuator.yaml", help="settings file (YAML)")
    run.set_defaults(handler=_run)

    check = sub.add_parser("check-config", help="validate a settings file")
    check.add_argument("file", help="settings file (YAML)")
    check.set_defaults(handler=_check_config)

    demo = sub.add_parser("demo", help="bring up two local hosts and a broker and evacuate a hot host")
    demo.add_argument("--state-dir", help="where the demo keeps its hosts (default: a temporary directory)")
    demo.add_argument("--keep", action="store_true", help="leave the demo's state directory behind")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except EvacuatorError as exc:
        # Startup failures exit non-zero so systemd restarts the service (STYLE habit 7).
        print(f"evacuator: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
