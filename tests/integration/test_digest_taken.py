"""The "taken" notice of digest requests, on a real broker: an asker notices a daemon restarted while
holding its request; askers and daemons of the version before it still work together; a daemon whose broker
user may not create the notices' queue still answers."""

from __future__ import annotations

import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pika
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from evacuator.lab.broker import LabBroker
from evacuator.peers.messages import TAKEN_TYPE, DigestReply, DigestRequest, PeerTrust, declare_exchange
from evacuator.peers.responder import DigestResponder
from evacuator.peers.rpc import PeerClient
from evacuator.transfer.digests import BLOCK_DIGEST_ALGORITHM
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings

pytestmark = pytest.mark.integration

MIB = 1 << 20
DIGEST = "ab" * 32


def _user(settings: BrokerSettings) -> str:
    return urlsplit(settings.url.get_secret_value()).username or "guest"


def _client(settings: BrokerSettings, *, timeout_base_seconds: float = 30.0, host_b_user: str | None = None,
            ) -> PeerClient:  # fmt: skip
    trust = PeerTrust(own_user=_user(settings), peer_users={"host-b": host_b_user or _user(settings)})
    return PeerClient(blocking_connection_factory(settings, connection_name="test-taken"), trust=trust,
                      exchange=settings.peers_exchange, timeout_base_seconds=timeout_base_seconds,
                      min_bytes_per_second=10 * MIB)


def _responder(settings: BrokerSettings, name: str, digest: Any, *, asker: str | None = None,
               ) -> DigestResponder:  # fmt: skip
    trust = PeerTrust(own_user=_user(settings), peer_users={"host-a": asker or _user(settings)})
    return DigestResponder(blocking_connection_factory(settings, connection_name=name), trust=trust,
                           host="host-b", exchange=settings.peers_exchange, digest_volume=digest)


def _events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [event for event in logs if event["event"] == name]


def test_a_daemon_restarted_mid_request_is_not_waited_for(broker_settings: BrokerSettings) -> None:
    # The restarted daemon serves the host again within a second, so the host's request queue looks as it
    # did: only the queue of the connection that took the request tells that it is gone.
    stuck = threading.Event()

    def never_done(_pool: str, _volume: str, _requester: str) -> str | None:
        stuck.wait(60)
        return None

    first = _responder(broker_settings, "doomed", never_done)
    second = _responder(broker_settings, "restarted", lambda _pool, _volume, _requester: DIGEST)
    first.start()
    outcome: list[str | None] = []
    client = _client(broker_settings, timeout_base_seconds=600)
    asking = threading.Thread(target=lambda: outcome.append(
        client.digest(host="host-b", pool="evacuator", volume="any.img", allocation_bytes=0)))
    began = time.monotonic()
    try:
        with capture_logs() as logs:
            asking.start()
            time.sleep(1.0)
            first.close()
            second.start()
            asking.join(30)
    finally:
        stuck.set()
        second.close()
    assert outcome == [None] and time.monotonic() - began < 15  # not the 600 s it was allowed
    [gone] = _events(logs, "peer_digest_unavailable")
    assert "went away" in str(gone["reason"])
    assert second.answered == 0  # the request went with the first daemon; nobody digested it twice


def test_a_request_without_the_header_gets_the_reply_alone(broker_settings: BrokerSettings) -> None:
    # An asker that does not ask for the "taken" notice: one message back, the reply, as it expects.
    request = DigestRequest(host="host-b", pool="evacuator", volume="disk.img",
                            algorithm=BLOCK_DIGEST_ALGORITHM)
    responder = _responder(broker_settings, "old-asker", lambda _pool, _volume, _requester: DIGEST)
    responder.start()
    try:
        with pika.BlockingConnection(pika.URLParameters(broker_settings.url.get_secret_value())) as conn:
            channel = conn.channel()
            replies = channel.queue_declare(queue="", exclusive=True).method.queue
            channel.basic_publish(
                exchange=broker_settings.peers_exchange, routing_key="digest.host-b",
                body=request.model_dump_json().encode(),
                properties=pika.BasicProperties(reply_to=replies, correlation_id="c1", expiration="30000",
                                                user_id=_user(broker_settings)))
            got: list[tuple[str | None, bytes]] = []
            deadline = time.monotonic() + 10
            while not got and time.monotonic() < deadline:
                method, properties, body = channel.basic_get(replies, auto_ack=True)
                if method is None:
                    conn.sleep(0.1)
                else:
                    got.append((properties.type, body))
            conn.sleep(1.0)  # anything else would have arrived by now
            method, _properties, _body = channel.basic_get(replies, auto_ack=True)
    finally:
        responder.close()
    assert method is None and len(got) == 1
    kind, body = got[0]
    assert kind is None and DigestReply.model_validate_json(body).digest == DIGEST


def test_a_garbled_notice_is_ignored_and_the_reply_still_counts(broker_settings: BrokerSettings) -> None:
    # A daemon that answers with a notice the asker cannot read (another version, say): the asker keeps
    # watching the host's request queue and takes the reply that follows.
    with pika.BlockingConnection(pika.URLParameters(broker_settings.url.get_secret_value())) as conn:
        channel = conn.channel()
        declare_exchange(channel, broker_settings.peers_exchange)
        queue = f"{broker_settings.peers_exchange}.digest.host-b"
        channel.queue_declare(queue=queue, exclusive=True)
        channel.queue_bind(queue=queue, exchange=broker_settings.peers_exchange, routing_key="digest.host-b")
        outcome: list[str | None] = []
        asking = threading.Thread(target=lambda: outcome.append(_client(broker_settings).digest(
            host="host-b", pool="evacuator", volume="disk.img", allocation_bytes=0)))
        with capture_logs() as logs:
            asking.start()
            deadline = time.monotonic() + 10
            method = None
            while method is None and time.monotonic() < deadline:
                method, properties, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    conn.sleep(0.1)
            assert method is not None, "the asker's request never arrived"
            assert properties.headers == {"evacuator-taken": True}
            request = DigestRequest.model_validate_json(body)
            for kind, reply in ((TAKEN_TYPE, b'{"incarnation": "../not-hex"}'), (None, DigestReply(
                    host="host-b", pool=request.pool, volume=request.volume, algorithm=request.algorithm,
                    digest=DIGEST).model_dump_json().encode())):
                channel.basic_publish(exchange="", routing_key=properties.reply_to, body=reply,
                                      properties=pika.BasicProperties(
                                          correlation_id=properties.correlation_id, type=kind,
                                          user_id=_user(broker_settings)))
            asking.join(30)
    assert outcome == [DIGEST]
    assert not _events(logs, "peer_digest_taken") and _events(logs, "peer_digest_received")


@pytest.fixture
def host_user_without_alive_queues(lab_broker: LabBroker, broker_settings: BrokerSettings) -> Iterator[str]:
    """A host's broker user allowed only the queue names of the version before the notices."""
    user, password = f"host-{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    exchange = re.escape(broker_settings.peers_exchange)
    ctl = [*lab_broker.rabbitmqctl, "--quiet"]
    # On stdin, as notifiers/rabbitmqctl.py gives it: an argument starting with "-" (token_urlsafe makes one
    # in 64) would be read as an option, and rabbitmqctl refuses it (exit 64).
    subprocess.run([*ctl, "add_user", user], input=password, text=True, check=True, capture_output=True)
    try:
        configure = f"^{exchange}(\\.digest\\..*)?$"
        subprocess.run([*ctl, "set_permissions", "-p", "/", user, configure, ".*", ".*"], check=True,
                       capture_output=True)
        parts = urlsplit(broker_settings.url.get_secret_value())
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port}"
        yield urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    finally:
        subprocess.run([*ctl, "delete_user", user], check=False, capture_output=True)


def test_a_daemon_whose_user_may_not_create_its_alive_queue_still_answers(
    broker_settings: BrokerSettings, host_user_without_alive_queues: str,
) -> None:
    restricted = broker_settings.model_copy(update={"url": SecretStr(host_user_without_alive_queues)})
    responder = _responder(restricted, "restricted", lambda _pool, _volume, _requester: DIGEST,
                           asker=_user(broker_settings))
    with capture_logs() as logs:
        responder.start()
        try:
            asker = _client(broker_settings, host_b_user=urlsplit(host_user_without_alive_queues).username)
            digest = asker.digest(host="host-b", pool="evacuator", volume="disk.img", allocation_bytes=0)
        finally:
            responder.close()
    assert digest == DIGEST and responder.answered == 1
    [off] = _events(logs, "digest_taken_notices_off")
    assert off["host"] == "host-b"
    assert not _events(logs, "peer_digest_taken")  # no notice: the asker watched the host's queue

