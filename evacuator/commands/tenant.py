"""`evacuator tenant add|remove`: provisions a tenant's broker user, permissions and notices queue."""

from __future__ import annotations

import argparse
import secrets
import shlex
from pathlib import Path
from urllib.parse import unquote, urlsplit

from evacuator.errors import ConfigError
from evacuator.settings import load_settings
from notifiers.provisioning import declare_tenant_queue, delete_tenant_queue, provision_tenant, remove_tenant
from notifiers.settings import BrokerSettings


def add_tenant_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tenant = sub.add_parser("tenant", help="provision or remove a tenant (broker user, permissions, queue)")
    actions = tenant.add_subparsers(dest="tenant_action", required=True)
    add = actions.add_parser("add", help="create the tenant's user (or set a new password) and its queue")
    add.add_argument("name", help="tenant name: the broker user and the first word of its routing keys")
    add.add_argument("--password-file", help="file whose first line is the password (default: generate one "
                     "and print it once)")  # fmt: skip
    remove = actions.add_parser("remove", help="delete the tenant's user and its notices queue")
    remove.add_argument("name")
    remove.add_argument("--keep-queue", action="store_true", help="keep the queue and its unread notices")
    for action in (add, remove):
        action.add_argument("--config", default="/etc/evacuator/evacuator.yaml", help="settings file (YAML)")
        action.add_argument("--rabbitmqctl", default="rabbitmqctl",
                            help="the command that runs rabbitmqctl (e.g. 'ssh mq rabbitmqctl')")  # fmt: skip
    add.add_argument("--vhost", default=None, help="virtual host (default: the one in broker.url)")
    add.set_defaults(handler=run_tenant_add)
    remove.set_defaults(handler=run_tenant_remove)


def run_tenant_add(args: argparse.Namespace) -> int:
    broker = load_settings(Path(args.config)).broker
    generated = args.password_file is None
    password = secrets.token_urlsafe(18) if generated else _read_password(Path(args.password_file))
    provision_tenant(
        args.name, password, vhost=args.vhost or _vhost(broker), notices_exchange=broker.notices_exchange,
        replies_exchange=broker.replies_exchange, rabbitmqctl=shlex.split(args.rabbitmqctl),
    )  # fmt: skip
    queue = declare_tenant_queue(broker, args.name)
    print(f"tenant {args.name}: user ready, queue {queue} declared")
    if generated:  # shown once, on stdout only (never logged): hand it to the tenant
        print(f"password: {password}")
    return 0


def run_tenant_remove(args: argparse.Namespace) -> int:
    broker = load_settings(Path(args.config)).broker
    remove_tenant(args.name, rabbitmqctl=shlex.split(args.rabbitmqctl))
    if not args.keep_queue:
        delete_tenant_queue(broker, args.name)
    print(f"tenant {args.name}: removed")
    return 0


def _read_password(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the password: {exc.strerror}") from exc
    if not lines or not lines[0]:
        raise ConfigError(f"{path}: expected the password on the first line")
    return lines[0]


def _vhost(broker: BrokerSettings) -> str:
    path = urlsplit(broker.url.get_secret_value()).path
    return unquote(path[1:]) if len(path) > 1 else "/"
