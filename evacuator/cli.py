"""The `evacuator` command line: parses arguments and hands each subcommand to its module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from evacuator.commands.tenant import add_tenant_parser
from evacuator.errors import ConfigError, EvacuatorError
from evacuator.logs import configure_logging
from evacuator.settings import load_settings
from monitors.errors import MonitorError
from monitors.settings import MonitorsSettings
from notifiers.errors import NotifierError


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


def _monitors_settings(config: str | None) -> MonitorsSettings:
    return MonitorsSettings() if config is None else load_settings(Path(config)).monitors


def _sensors(args: argparse.Namespace) -> int:
    import json

    from monitors.report import build_sensor_report, format_sensor_report
    from monitors.sources import SourcePoller, build_sources

    monitors = _monitors_settings(args.config)
    if args.sysfs_root is not None:
        monitors = monitors.model_copy(update={"sysfs_root": Path(args.sysfs_root)})
    report = build_sensor_report(SourcePoller(build_sources(monitors)).poll(), sysfs_root=monitors.sysfs_root)
    print(json.dumps(report, indent=2) if args.json else format_sensor_report(report))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from monitors.replay import format_timeline, replay_lines

    policy = _monitors_settings(args.config).to_policy()
    try:
        lines = Path(args.trace).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{args.trace}: cannot read trace: {exc.strerror}") from exc
    print(format_timeline(replay_lines(lines, policy), only_changes=not args.all))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from evacuator.commands.demo import run_demo

    return run_demo(state_dir=Path(args.state_dir) if args.state_dir else None, keep=args.keep)


def _move(args: argparse.Namespace) -> int:
    from evacuator.commands.move import run_moves

    return run_moves(load_settings(Path(args.config)), list(args.vm_uuid))


def _cancel(args: argparse.Namespace) -> int:
    from evacuator.commands.cancel import run_cancel

    return run_cancel(load_settings(Path(args.config)), args.vm_uuid, args.reason)


def _peers(args: argparse.Namespace) -> int:
    from evacuator.commands.peers import run_peers

    return run_peers(load_settings(Path(args.config)), as_json=args.json)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evacuator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", default="/etc/evacuator/evacuator.yaml", help="settings file (YAML)")
    run.set_defaults(handler=_run)

    check = sub.add_parser("check-config", help="validate a settings file")
    check.add_argument("file", help="settings file (YAML)")
    check.set_defaults(handler=_check_config)

    sensors = sub.add_parser("sensors", help="print every current sensor reading")
    sensors.add_argument("--config", help="settings file (YAML); default: built-in monitor defaults")
    sensors.add_argument("--sysfs-root", help="the directory standing for /sys (holds class/, devices/)")
    sensors.add_argument("--json", action="store_true", help="one JSON object (format: README)")
    sensors.set_defaults(handler=_sensors)

    simulate = sub.add_parser("simulate", help="replay a trace of readings through the detector")
    simulate.add_argument("--config", required=True, help="settings file (YAML) whose policy to try")
    simulate.add_argument("--trace", required=True, help="JSON-lines trace (format: README)")
    simulate.add_argument("--all", action="store_true", help="print every sample, not only changes")
    simulate.set_defaults(handler=_simulate)

    move = sub.add_parser("move", help="move VMs now and finish every move the journal left unfinished")
    move.add_argument("vm_uuid", nargs="*", help="VMs on this host to move now (none: only resume)")
    move.add_argument("--config", default="/etc/evacuator/evacuator.yaml", help="settings file (YAML)")
    move.set_defaults(handler=_move)

    add_tenant_parser(sub)

    cancel = sub.add_parser("cancel", help="cancel a pending move (before it quiesces) and tell the tenant")
    cancel.add_argument("vm_uuid", help="the VM (a consistency group is cancelled whole)")
    cancel.add_argument("--config", default="/etc/evacuator/evacuator.yaml", help="settings file (YAML)")
    cancel.add_argument("--reason", default="cancelled by the operator", help="told to the tenant")
    cancel.set_defaults(handler=_cancel)

    peers = sub.add_parser("peers", help="whose digest daemon answers, and the cloud-wide slots held")
    peers.add_argument("--config", default="/etc/evacuator/evacuator.yaml", help="settings file (YAML)")
    peers.add_argument("--json", action="store_true", help="one JSON object")
    peers.set_defaults(handler=_peers)

    demo = sub.add_parser("demo", help="bring up two local hosts and a broker and evacuate a hot host")
    demo.add_argument("--state-dir", help="where the demo keeps its hosts (default: a temporary directory)")
    demo.add_argument("--keep", action="store_true", help="leave the demo's state directory behind")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("sensors", "simulate", "check-config", "peers"):
        # Their output is the report on stdout; only problems are logged, and to stderr.
        configure_logging("auto", level="warning")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (EvacuatorError, MonitorError, NotifierError) as exc:
        # Startup failures exit non-zero so systemd restarts the service (STYLE habit 7).
        print(f"evacuator: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
