#!/usr/bin/env python3
"""A tenant's side of the evacuator contract, runnable as is (needs only `pip install pika`).

`listen` (the default) reads the tenant's notices, prints each as one JSON line, drops duplicates (same
event_id), prints every reply_rejected with the message_id it answers (`in_reply_to`), and answers every
scheduled VM: `ready` (after --ready-after seconds of "preprocessing"), or `postpone` when --postpone is given
and the notice allows it. `register` sets a VM's preprocessing window before any notice, without knowing its
host. Replace `prepare_vm` with your platform's drain logic.

    python3 examples/tenant_client.py --url amqps://acme:PASSWORD@mq.example.net:5671/%2F --tenant acme \\
        --ca-file /etc/ssl/evacuator-ca.pem
    python3 examples/tenant_client.py --url ... register --vm 0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01 \\
        --window-seconds 900

The rules this follows (docs/asyncapi.yaml says why): the notices queue is the service's (a quorum queue
that `evacuator tenant add` created): only consume it, never declare it (403). Replies go out on a channel of
their own, because a broker refusal closes the channel it happens on. Every reply carries user_id, a fresh
message_id and `mandatory`: a basic.return means the routing key names no host.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions

SCHEMA_VERSION = 1
ALL_HOSTS = "all"  # `<tenant>.all` reaches every host: the one holding the VM stores a registered window


def connect(url: str, ca_file: str | None) -> pika.BlockingConnection:
    parameters = pika.URLParameters(url)
    parts = urlsplit(url)
    if parts.scheme == "amqps":  # verify the broker's certificate and name against the CA
        context = ssl.create_default_context(cafile=ca_file)
        parameters.ssl_options = pika.SSLOptions(context, server_hostname=parts.hostname)
    return pika.BlockingConnection(parameters)


def prepare_vm(vm: dict[str, Any], seconds: float) -> None:
    """Your platform's preprocessing: drain traffic, flush caches, hand leadership over..."""
    time.sleep(seconds)


def reply_body(kind: str, vm_uuid: str, **fields: Any) -> dict[str, Any]:
    """A reply as the schemas in docs/schemas/ require it: schema_version and type are never left out."""
    return {"schema_version": SCHEMA_VERSION, "type": kind, "vm_uuid": vm_uuid, **fields}


def emit(**line: Any) -> None:
    print(json.dumps(line), flush=True)


class Replier:
    """Publishes replies on a channel of its own: a refusal closes only this channel, and it is reopened."""

    def __init__(self, connection: pika.BlockingConnection, tenant: str) -> None:
        self._connection = connection
        self._tenant = tenant
        self._channel: Any = None

    def send(self, exchange: str, routing_key: str, body: dict[str, Any]) -> str | None:
        """Publish one reply; its message_id once the broker confirmed it, None if it was returned/refused."""
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()  # a returned or refused reply raises here instead of vanishing
        message_id = str(uuid.uuid4())  # a reply_rejected names it in in_reply_to
        try:
            self._channel.basic_publish(
                exchange=exchange, routing_key=routing_key, body=json.dumps(body).encode(), mandatory=True,
                properties=pika.BasicProperties(
                    content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                    user_id=self._tenant, message_id=message_id,
                ),
            )  # fmt: skip
        except pika.exceptions.UnroutableError:
            # No queue is bound to this key: the broker lets a tenant publish `<tenant>.<any word>`.
            emit(unroutable=routing_key, meaning="no such host", vm_uuid=body["vm_uuid"])
            return None
        except pika.exceptions.ChannelClosedByBroker as exc:
            # Refused (a key or exchange not ours, a forged user_id): the broker closed this channel only.
            emit(refused_by_broker=exc.reply_code, reason=exc.reply_text, routing_key=routing_key)
            self._channel = None
            return None
        emit(replied=body["type"], vm_uuid=body["vm_uuid"], message_id=message_id)
        return message_id


def answer(replier: Replier, notice: dict[str, Any], args: argparse.Namespace) -> None:
    for vm in notice["vms"]:
        if args.postpone and "postpone" in notice["allowed_replies"]:
            # Added to the VM's current deadline, capped at its latest_deadline (which never moves).
            body = reply_body("postpone", vm["vm_uuid"], postpone_seconds=args.postpone)
        else:
            prepare_vm(vm, args.ready_after)
            body = reply_body("ready", vm["vm_uuid"])
        body["event_id"] = notice["event_id"]  # the scheduled notice's: an update's would be stale_event
        replier.send(notice["reply_exchange"], notice["reply_routing_key"], body)


def handle(replier: Replier, notice: dict[str, Any], args: argparse.Namespace) -> None:
    emit(notice=notice)
    if notice["type"] == "evacuation_scheduled":
        answer(replier, notice, args)
    elif notice["type"] == "reply_rejected":
        emit(rejected=notice["code"], in_reply_to=notice["in_reply_to"], vm_uuid=notice["vm_uuid"],
             reason=notice["reason"])  # fmt: skip


def listen(args: argparse.Namespace, tenant: str) -> int:
    connection = connect(args.url, args.ca_file)
    notices = connection.channel()  # consumes only: nothing published here can get it closed
    notices.basic_qos(prefetch_count=1)
    replier = Replier(connection, tenant)
    seen: set[str] = set()  # a real client keeps these (and the highest incarnation per host) on disk
    handled = 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    for method, _properties, body in notices.consume(f"{tenant}.notices", inactivity_timeout=1.0):
        if deadline is not None and time.monotonic() > deadline:
            break
        if method is None:
            continue
        notice = json.loads(body)
        if notice.get("schema_version") != SCHEMA_VERSION:
            emit(skipped="unknown schema_version")
        elif notice["event_id"] in seen:
            emit(duplicate=notice["event_id"])
        else:
            seen.add(notice["event_id"])
            handle(replier, notice, args)
            handled += 1
        notices.basic_ack(method.delivery_tag)  # only after handling: a crash means redelivery, not loss
        if args.max_notices is not None and handled >= args.max_notices:
            break
    notices.cancel()
    connection.close()
    return 0


def register(args: argparse.Namespace, tenant: str) -> int:
    """Send `register` to `<tenant>.all`: the host holding the VM stores the window, the others stay silent,
    so no answer does not prove it was stored (a refusal comes back as reply_rejected on the notices)."""
    connection = connect(args.url, args.ca_file)
    try:
        body = reply_body("register", args.vm, window_seconds=args.window_seconds)
        sent = Replier(connection, tenant).send(args.replies_exchange, f"{tenant}.{ALL_HOSTS}", body)
    finally:
        connection.close()
    return 0 if sent else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Read evacuator notices and answer them; register windows.")
    parser.add_argument("--url", required=True, help="amqp(s)://TENANT:PASSWORD@HOST:PORT/VHOST")
    parser.add_argument("--tenant", help="tenant name (default: the URL's user)")
    parser.add_argument("--ca-file", help="CA that signed the broker's certificate (amqps)")
    parser.add_argument("--ready-after", type=float, default=0.0, help="seconds of preprocessing per VM")
    parser.add_argument("--postpone", type=int, help="answer postpone by this many seconds instead of ready")
    parser.add_argument("--max-notices", type=int, help="exit after this many distinct notices")
    parser.add_argument("--timeout", type=float, help="exit after this many seconds")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("listen", help="read notices and answer them (the default)")
    registering = commands.add_parser("register", help="set a VM's preprocessing window, host unknown")
    registering.add_argument("--vm", required=True, help="the VM's UUID")
    registering.add_argument("--window-seconds", type=int, required=True, help="preprocessing time wanted")
    registering.add_argument("--replies-exchange", default="evacuator.replies", help="the replies exchange")
    args = parser.parse_args(argv)
    tenant = args.tenant or unquote(urlsplit(args.url).username or "")
    return register(args, tenant) if args.command == "register" else listen(args, tenant)


if __name__ == "__main__":
    sys.exit(main())
