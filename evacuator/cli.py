"""The `evacuator` command line: its arguments, and each subcommand handed to its module in commands/."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

_DEFAULT_CONFIG = "/etc/evacuator/evacuator.yaml"
CONFIG_ENV = "EVACUATOR_CONFIG"  # the settings file every command reads unless given --config
# Exit code of a command whose reader went away (`evacuator sensors --json | head`): as if killed by SIGPIPE.
EXIT_BROKEN_PIPE = 141

# Each subcommand's module is imported only when it runs: `check-config`, `sensors` and `simulate` load
# neither libvirt nor the broker's client, and only `demo` loads the lab. Logging and the error classes are
# imported once the arguments parse (main), so `--version`, `--help` and a usage error load none of them.


def _run(args: argparse.Namespace) -> int:
    from evacuator.commands import run

    return run.main(args)


def _check_config(args: argparse.Namespace) -> int:
    from evacuator.commands import check_config

    return check_config.main(args)


def _sensors(args: argparse.Namespace) -> int:
    from evacuator.commands import sensors

    return sensors.main(args)


def _simulate(args: argparse.Namespace) -> int:
    from evacuator.commands import simulate

    return simulate.main(args)


def _move(args: argparse.Namespace) -> int:
    from evacuator.commands import move

    return move.main(args)


def _tenant(args: argparse.Namespace) -> int:
    from evacuator.commands import tenant

    return tenant.main(args)


def _host(args: argparse.Namespace) -> int:
    from evacuator.commands import host

    return host.main(args)


def _cancel(args: argparse.Namespace) -> int:
    from evacuator.commands import cancel

    return cancel.main(args)


def _peers(args: argparse.Namespace) -> int:
    from evacuator.commands import peers

    return peers.main(args)


def _hosts(args: argparse.Namespace) -> int:
    from evacuator.commands import hosts

    return hosts.main(args)


def _pause(args: argparse.Namespace) -> int:
    from evacuator.commands import pause

    return pause.main_pause(args)


def _resume(args: argparse.Namespace) -> int:
    from evacuator.commands import pause

    return pause.main_resume(args)


def _history(args: argparse.Namespace) -> int:
    from evacuator.commands import history

    return history.main(args)


def _since(text: str) -> object:
    """--since, parsed when the arguments are (a bad one exits 2 with the usage)."""
    from evacuator.commands import history

    return history.parse_since(text)


def _status(args: argparse.Namespace) -> int:
    from evacuator.commands import status

    return status.main(args)


def _approve(args: argparse.Namespace) -> int:
    from evacuator.commands import approval

    return approval.main_approve(args)


def _reject(args: argparse.Namespace) -> int:
    from evacuator.commands import approval

    return approval.main_reject(args)


def _drain(args: argparse.Namespace) -> int:
    from evacuator.commands import drain

    return drain.main_drain(args)


def _undrain(args: argparse.Namespace) -> int:
    from evacuator.commands import drain

    return drain.main_undrain(args)


def _demo(args: argparse.Namespace) -> int:
    from evacuator.commands import demo

    return demo.main(args)


def _default_config() -> str:
    return os.environ.get(CONFIG_ENV) or _DEFAULT_CONFIG


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=_default_config(),
                        help=f"settings file (YAML); default ${CONFIG_ENV}, else {_DEFAULT_CONFIG}")


def _version() -> str:
    try:
        return version("evacuator")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _tenant_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenant = sub.add_parser("tenant", help="provision or remove a tenant (broker user, permissions, queue)")
    tenant.set_defaults(handler=_tenant)
    actions = tenant.add_subparsers(dest="tenant_action", required=True)
    add = actions.add_parser("add", help="create the tenant's user (tagged evacuator-tenant) and its queue; "
                             "for an existing tenant, set its permissions and queue again")  # fmt: skip
    add.add_argument("name", help="tenant name: the broker user and the first word of its routing keys; "
                     "an existing user that is not a tenant is refused")  # fmt: skip
    add.add_argument("--password-file", help="file whose first line is the password (default: generate one "
                     "and print it once)")  # fmt: skip
    add.add_argument("--reset-password", action="store_true",
                     help="set the password of an existing tenant too (else it is kept)")  # fmt: skip
    add.add_argument("--vhost", default=None, help="virtual host (default: the one in broker.url)")
    remove = actions.add_parser("remove", help="delete the tenant's user and its notices queue (a user that "
                                "is not a tenant is refused)")  # fmt: skip
    remove.add_argument("name")
    remove.add_argument("--keep-queue", action="store_true", help="keep the queue and its unread notices")
    for action in (add, remove):
        _config_option(action)
        action.add_argument("--rabbitmqctl", default="rabbitmqctl",
                            help="the command that runs rabbitmqctl (e.g. 'ssh mq rabbitmqctl')")  # fmt: skip


def _host_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    host = sub.add_parser("host", help="provision or remove a host's own broker user (host.NAME) and its "
                          "permissions")  # fmt: skip
    host.set_defaults(handler=_host)
    actions = host.add_subparsers(dest="host_action", required=True)
    add = actions.add_parser("add", help="create host.NAME (tagged evacuator-host), the vhosts, and exactly "
                             "its permissions; for an existing host user, set them again")  # fmt: skip
    add.add_argument("name", help="the host's name (host.name in its settings); an existing broker user "
                     "host.NAME that is not a host's is refused")  # fmt: skip
    add.add_argument("--password-file", help="file whose first line is the password (default: generate one "
                     "and print it once)")  # fmt: skip
    add.add_argument("--reset-password", action="store_true",
                     help="set the password of an existing host user too (else it is kept)")  # fmt: skip
    add.add_argument("--vhost", default=None,
                     help="the tenants' virtual host (default: the one in broker.url)")  # fmt: skip
    add.add_argument("--peers-vhost", default=None,
                     help="the daemons' own virtual host (default: broker.peers_vhost, else "
                     "broker.url's)")  # fmt: skip
    remove = actions.add_parser("remove", help="delete host.NAME (a user that is not a host's is refused)")
    remove.add_argument("name")
    for action in (add, remove):
        _config_option(action)
        action.add_argument("--rabbitmqctl", default="rabbitmqctl",
                            help="the command that runs rabbitmqctl (e.g. 'ssh mq rabbitmqctl')")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evacuator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"evacuator {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    _config_option(run)
    run.set_defaults(handler=_run)

    check = sub.add_parser("check-config", help="validate a settings file")
    # --config as in every other command; the file may also be given bare, as earlier versions took it.
    check.add_argument("file", nargs="?", default=None, help="settings file (YAML), same as --config")
    _config_option(check)
    check.add_argument("--schema", action="store_true",
                       help="print the settings file's JSON Schema instead (docs/settings.schema.json)")
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
    _config_option(move)
    move.set_defaults(handler=_move)

    _tenant_parser(sub)
    _host_parser(sub)

    cancel = sub.add_parser("cancel", help="cancel a pending move (before it quiesces) and tell the tenant")
    cancel.add_argument("vm_uuid", help="the VM (a consistency group is cancelled whole)")
    _config_option(cancel)
    cancel.add_argument("--reason", default="cancelled by the operator", help="told to the tenant")
    cancel.set_defaults(handler=_cancel)

    peers = sub.add_parser("peers", help="whose digest daemon answers, and the cloud-wide slots held")
    _config_option(peers)
    peers.add_argument("--json", action="store_true", help="one JSON object")
    peers.set_defaults(handler=_peers)

    hosts = sub.add_parser("hosts", help="every host's state as this host hears it: health, room, age")
    _config_option(hosts)
    hosts.add_argument("--json", action="store_true", help="one JSON object (fields: README, \"Host view\")")
    hosts.add_argument("--listen-seconds", type=float, default=None,
                       help="how long to listen at most (default: host_view.interval_seconds + 1)")
    hosts.set_defaults(handler=_hosts)

    pause = sub.add_parser("pause", help="pause evacuations cloud-wide: no new move starts until resume")
    _config_option(pause)
    pause.add_argument("--reason", default="(no reason given)", help="why, shown to admins and in the logs")
    pause.add_argument("--status", action="store_true", help="only say whether evacuations are paused")
    pause.add_argument("--json", action="store_true", help="one JSON object")
    pause.set_defaults(handler=_pause)

    resume = sub.add_parser("resume", help="lift a cloud-wide pause of evacuations")
    _config_option(resume)
    resume.add_argument("--json", action="store_true", help="one JSON object")
    resume.set_defaults(handler=_resume)

    history = sub.add_parser("history", help="this host's incidents and moves, from its journal (read-only)")
    _config_option(history)
    history.add_argument("--since", type=_since, default=None, metavar="WHEN",
                         help="only what ended since WHEN: an ISO time (UTC unless it says) or a duration "
                         "back from now (90m, 24h, 7d)")  # fmt: skip
    history.add_argument("--json", action="store_true", help="one JSON object (fields: README, \"History\")")
    history.set_defaults(handler=_history)

    status = sub.add_parser("status", help="this host now: verdict and why, incident, VMs to move, moves "
                            "under way (from its state directory)")  # fmt: skip
    _config_option(status)
    status.add_argument("--cloud", action="store_true", help="also the other hosts in brief and the pause "
                        "(listens on the broker)")  # fmt: skip
    status.add_argument("--json", action="store_true", help="one JSON object (fields: README, \"Status\")")
    status.set_defaults(handler=_status)

    for name, handler, what in (("approve", _approve, "let the evacuation awaiting approval begin"),
                                ("reject", _reject, "refuse it: nothing moves, the host stays quarantined")):
        answer = sub.add_parser(name, help=what)
        _config_option(answer)
        answer.add_argument("--reason", default="", help="why, for the logs")
        answer.add_argument("--json", action="store_true", help="one JSON object")
        answer.set_defaults(handler=handler)

    drain = sub.add_parser("drain", help="planned maintenance: move every VM off this host through the "
                           "tenant contract, and take none until undrain")  # fmt: skip
    _config_option(drain)
    drain.add_argument("--window", type=int, default=None, metavar="SECONDS",
                       help="the window of a VM that registered none "
                       "(default: evacuation.default_window_seconds)")  # fmt: skip
    drain.add_argument("--reason", default="planned maintenance", help="what the tenants are told")
    drain.add_argument("--wait", action="store_true", help="follow the drain until every VM moved")
    drain.add_argument("--json", action="store_true", help="one JSON object")
    drain.set_defaults(handler=_drain)

    undrain = sub.add_parser("undrain", help="return a drained host to service: it takes VMs again")
    _config_option(undrain)
    undrain.add_argument("--json", action="store_true", help="one JSON object")
    undrain.set_defaults(handler=_undrain)

    demo = sub.add_parser("demo", help="bring up two local hosts and a broker and evacuate a hot host")
    demo.add_argument("--state-dir", help="where the demo keeps its hosts (default: a temporary directory)")
    demo.add_argument("--keep", action="store_true", help="leave the demo's state directory behind")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The error modules import nothing; evacuator.logs must be the first to import structlog (see there).
    from evacuator.errors import EvacuatorError
    from evacuator.logs import configure_logging
    from monitors.errors import MonitorError
    from notifiers.errors import NotifierError

    if args.command in ("sensors", "simulate", "check-config", "peers", "hosts", "pause", "resume", "status",
                        "history"):
        # Their output is the report on stdout; only problems are logged, and to stderr.
        configure_logging("auto", level="warning")
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # a reader gone away shows here, inside the try, rather than at exit
        return code
    except (EvacuatorError, MonitorError, NotifierError) as exc:
        # Startup failures exit non-zero so systemd restarts the service (STYLE habit 7).
        print(f"evacuator: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): no traceback. Python would still fail flushing stdout at
        # exit, so stdout points at /dev/null from here on (as the Python docs on SIGPIPE advise).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
