"""`evacuator host add|remove`: a host's own broker user (`host.<name>`) and the permissions confining it."""

from __future__ import annotations

import argparse
import secrets
import shlex
from pathlib import Path

from evacuator.commands.tenant import read_password
from evacuator.peers.host_users import HostOutcome, host_grants, host_user, provision_host, remove_host
from evacuator.settings import load_settings
from notifiers.settings import url_vhost


def main(args: argparse.Namespace) -> int:
    return run_host_add(args) if args.host_action == "add" else run_host_remove(args)


def run_host_add(args: argparse.Namespace) -> int:
    broker = load_settings(Path(args.config)).broker
    generated = args.password_file is None
    password = secrets.token_urlsafe(24) if generated else read_password(Path(args.password_file))
    vhost = args.vhost or url_vhost(broker.url.get_secret_value())
    peers_vhost = args.peers_vhost or broker.peers_virtual_host
    grants = host_grants(
        args.name, vhost=vhost, peers_vhost=peers_vhost, notices_exchange=broker.notices_exchange,
        replies_exchange=broker.replies_exchange, peers_exchange=broker.peers_exchange,
    )  # fmt: skip
    outcome = provision_host(args.name, password, grants=grants, rabbitmqctl=shlex.split(args.rabbitmqctl),
                             reset_password=args.reset_password)  # fmt: skip
    user = host_user(args.name)
    print(f"host {args.name}: broker user {user} {_SAID[outcome]}; vhosts {vhost}"
          + ("" if peers_vhost == vhost else f" (tenants) and {peers_vhost} (peers)"))  # fmt: skip
    if generated and outcome is not HostOutcome.UNCHANGED:
        # Shown once, on stdout only (never logged): put it in that host's broker.password_file.
        print(f"password: {password}")
    return 0


def run_host_remove(args: argparse.Namespace) -> int:
    existed = remove_host(args.name, rabbitmqctl=shlex.split(args.rabbitmqctl))
    said = "removed" if existed else "did not exist"
    print(f"host {args.name}: broker user {host_user(args.name)} {said}")
    return 0


_SAID = {
    HostOutcome.CREATED: "created",
    HostOutcome.PASSWORD_RESET: "exists, new password set, permissions set again",
    HostOutcome.UNCHANGED: "exists, password unchanged (--reset-password sets a new one), permissions set "
    "again",
}
