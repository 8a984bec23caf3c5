#!/usr/bin/env python3
"""A tenant's side of the evacuator contract, runnable as is (needs only `pip install pika`).

It reads the tenant's notices, prints each as one JSON line, drops duplicates (same event_id), and answers
every scheduled VM: `ready` (after --ready-after seconds of "preprocessing"), or `postpone` when --postpone is
given and the notice allows it. Replace `prepare_vm` with your platform's drain logic.

    python3 examples/tenant_client.py --url amqps://acme:PASSWORD@mq.example.net:5671/%2F --tenant acme \\
        --ca-file /etc/ssl/evacuator-ca.pem
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import pika

SCHEMA_VERSION = 1


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


def reply(channel: Any, tenant: str, notice: dict[str, Any], body: dict[str, Any]) -> None:
    """Publish a reply the broker vouches for: user_id is checked against the connection's user."""
    channel.basic_publish(
        exchange=notice["reply_exchange"],
        routing_key=notice["reply_routing_key"],
        body=json.dumps({"schema_version": SCHEMA_VERSION, **body}).encode(),
        properties=pika.BasicProperties(
            content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent, user_id=tenant
        ),
        mandatory=True,
    )


def answer(channel: Any, tenant: str, notice: dict[str, Any], args: argparse.Namespace) -> None:
    for vm in notice["vms"]:
        if args.postpone and "postpone" in notice["allowed_replies"]:
            body = {"type": "postpone", "vm_uuid": vm["vm_uuid"], "postpone_seconds": args.postpone}
        else:
            prepare_vm(vm, args.ready_after)
            body = {"type": "ready", "vm_uuid": vm["vm_uuid"]}
        reply(channel, tenant, notice, {**body, "event_id": notice["event_id"]})
        print(json.dumps({"replied": body["type"], "vm_uuid": vm["vm_uuid"]}), flush=True)


def run(args: argparse.Namespace) -> int:
    tenant = args.tenant or unquote(urlsplit(args.url).username or "")
    connection = connect(args.url, args.ca_file)
    channel = connection.channel()
    channel.confirm_delivery()  # a refused reply raises here instead of vanishing
    channel.basic_qos(prefetch_count=1)
    seen: set[str] = set()  # a real client keeps these (and the last incarnation per host) on disk
    handled = 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    for method, _properties, body in channel.consume(f"{tenant}.notices", inactivity_timeout=1.0):
        if deadline is not None and time.monotonic() > deadline:
            break
        if method is None:
            continue
        notice = json.loads(body)
        if notice.get("schema_version") != SCHEMA_VERSION:
            print(json.dumps({"skipped": "unknown schema_version"}), flush=True)
        elif notice["event_id"] in seen:
            print(json.dumps({"duplicate": notice["event_id"]}), flush=True)
        else:
            seen.add(notice["event_id"])
            print(json.dumps({"notice": notice}), flush=True)
            if notice["type"] == "evacuation_scheduled":
                answer(channel, tenant, notice, args)
            handled += 1
        channel.basic_ack(method.delivery_tag)  # only after handling: a crash means redelivery, not loss
        if args.max_notices is not None and handled >= args.max_notices:
            break
    channel.cancel()
    connection.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Read evacuator notices and answer them.")
    parser.add_argument("--url", required=True, help="amqp(s)://TENANT:PASSWORD@HOST:PORT/VHOST")
    parser.add_argument("--tenant", help="tenant name (default: the URL's user)")
    parser.add_argument("--ca-file", help="CA that signed the broker's certificate (amqps)")
    parser.add_argument("--ready-after", type=float, default=0.0, help="seconds of preprocessing per VM")
    parser.add_argument("--postpone", type=int, help="answer postpone by this many seconds instead of ready")
    parser.add_argument("--max-notices", type=int, help="exit after this many distinct notices")
    parser.add_argument("--timeout", type=float, help="exit after this many seconds")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
