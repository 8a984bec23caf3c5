"""`evacuator tenant add|remove`: provisions a tenant's broker user, permissions and notices queue."""

from __future__ import annotations

import argparse
import secrets
import shlex
from pathlib import Path

from evacuator.errors import ConfigError
from evacuator.settings import load_settings
from notifiers.provisioning import (
    TenantOutcome,
    declare_tenant_queue,
    delete_tenant_queue,
    provision_tenant,
    remove_tenant,
)
from notifiers.settings import url_vhost


def main(args: argparse.Namespace) -> int:
    return run_tenant_add(args) if args.tenant_action == "add" else run_tenant_remove(args)


def run_tenant_add(args: argparse.Namespace) -> int:
    broker = load_settings(Path(args.config)).broker
    generated = args.password_file is None
    password = secrets.token_urlsafe(18) if generated else read_password(Path(args.password_file))
    outcome = provision_tenant(
        args.name, password, vhost=args.vhost or url_vhost(broker.url.get_secret_value()),
        notices_exchange=broker.notices_exchange, replies_exchange=broker.replies_exchange,
        rabbitmqctl=shlex.split(args.rabbitmqctl), reset_password=args.reset_password,
        reserved_users=(broker.user,),
    )  # fmt: skip
    queue = declare_tenant_queue(broker, args.name)
    print(f"tenant {args.name}: {_SAID[outcome]}, queue {queue} declared")
    if generated and outcome is not TenantOutcome.UNCHANGED:
        print(f"password: {password}")  # shown once, on stdout only (never logged): hand it to the tenant
    return 0


def run_tenant_remove(args: argparse.Namespace) -> int:
    broker = load_settings(Path(args.config)).broker
    remove_tenant(args.name, rabbitmqctl=shlex.split(args.rabbitmqctl))
    if not args.keep_queue:
        delete_tenant_queue(broker, args.name)
    print(f"tenant {args.name}: removed")
    return 0


_SAID = {
    TenantOutcome.CREATED: "user created",
    TenantOutcome.PASSWORD_RESET: "user exists, new password set, permissions set again",
    TenantOutcome.UNCHANGED: "user exists, password unchanged (--reset-password sets a new one), "
    "permissions set again",
}


def read_password(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the password: {exc.strerror}") from exc
    if not lines or not lines[0]:
        raise ConfigError(f"{path}: expected the password on the first line")
    return lines[0]
