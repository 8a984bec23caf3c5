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


def main(args: argparse.Namespace) -> int:
    return run_tenant_add(args) if args.tenant_action == "add" else run_tenant_remove(args)


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
