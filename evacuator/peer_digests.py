"""A host's own digest of its volume, asked for over AMQP: verifying a copy without reading it back.

A copy is verified against what the destination stored. Reading that back through a libvirt download costs
the destination's libvirtd 1.8 s of CPU per GiB, more than the copy itself; the destination's evacuator
daemon reads its own file for about 0.1 s per GiB instead. So each daemon answers digest requests for its own
pool (`DigestResponder`), and a mover asks the destination's (`PeerDigestClient`). Anything short of a valid
answer (no daemon listening, a timeout, a file the peer cannot see, another digest algorithm) gives None, and
the mover reads back through libvirt: a missing peer slows verification but never weakens it.

Wire: requests go to the durable direct exchange `<peers_exchange>` with routing key `digest.<host>`, bound
to the exclusive queue `<peers_exchange>.digest.<host>` of that host's daemon (it vanishes with the daemon, so
a request to a stopped one is returned at once, not left waiting). Replies go to the asker's exclusive queue.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import pika
import pika.exceptions
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evacuator.errors import EvacuatorError
from evacuator.hypervisor import BLOCK_DIGEST_ALGORITHM
from notifiers.connection import CONNECTION_ERRORS, ConnectionFactory
from notifiers.topology import check_word

log = structlog.get_logger(__name__)

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$"  # libvirt pool and volume names the evacuator creates
_POLL_SECONDS = 0.25
_RECONNECT_DELAYS_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

VolumeDigester = Callable[[str, str], str | None]
"""(pool, volume) -> the digest of this host's own file, None when this host cannot read it itself."""


class DigestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    pool: str = Field(pattern=_NAME)
    volume: str = Field(pattern=_NAME)
    algorithm: str = Field(max_length=64)


class DigestReply(BaseModel):
    """`digest` is None with a reason in `error` when the peer cannot answer for its file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    pool: str
    volume: str
    algorithm: str
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    error: str | None = Field(default=None, max_length=1000)


def request_routing_key(host: str) -> str:
    return f"digest.{check_word('host', host)}"


def responder_queue(exchange: str, host: str) -> str:
    return f"{exchange}.{request_routing_key(host)}"


def answer(request: DigestRequest, *, host: str, digest_volume: VolumeDigester) -> DigestReply:
    """The reply to one request: pure apart from `digest_volume`, whose failures become the reply's error."""

    def refuse(error: str) -> DigestReply:
        return DigestReply(host=host, pool=request.pool, volume=request.volume,
                           algorithm=BLOCK_DIGEST_ALGORITHM, error=error)

    if request.host != host:
        return refuse(f"this is {host}, not {request.host}")
    if request.algorithm != BLOCK_DIGEST_ALGORITHM:
        return refuse(f"unknown digest algorithm {request.algorithm!r}")
    try:
        digest = digest_volume(request.pool, request.volume)
    except EvacuatorError as exc:
        return refuse(str(exc))
    if digest is None:
        return refuse("this host does not see the volume's file")
    return DigestReply(host=host, pool=request.pool, volume=request.volume, algorithm=BLOCK_DIGEST_ALGORITHM,
                       digest=digest)


class DigestResponder:
    """Answers digest requests for this host's volumes on its own thread and connection; the digests are
    computed by `workers` threads, so a long one never stalls the connection's heartbeats."""

    def __init__(
        self, connect: ConnectionFactory, *, host: str, exchange: str, digest_volume: VolumeDigester,
        workers: int = 2,
    ) -> None:
        self._connect = connect
        self._host = check_word("host", host)
        self._exchange = exchange
        self._digest_volume = digest_volume
        self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="evacuator-digest")
        self._prefetch = workers
        self._stopping = threading.Event()
        self._ready: Future[None] = Future()
        self._thread: threading.Thread | None = None
        self.answered = 0  # replies sent, for tests and the bench

    def start(self, *, timeout_seconds: float = 30.0) -> None:
        """Consume; raise the first connection's error (BrokerUnavailable) if it fails."""
        self._thread = threading.Thread(target=self._run, name=f"digest-responder-{self._host}", daemon=True)
        self._thread.start()
        try:
            self._ready.result(timeout=timeout_seconds)
        except BaseException:
            self.close()
            raise

    def close(self, *, timeout_seconds: float = 30.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_seconds)
        self._workers.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                connection = self._open()
            except Exception as exc:
                if not self._ready.done():
                    self._ready.set_exception(exc)
                    return
                log.warning("broker_reconnect_failed", role="digests", host=self._host, error=repr(exc))
                self._stopping.wait(_reconnect_delay_seconds(failures))
                failures += 1
                continue
            failures = 0
            if not self._ready.done():
                self._ready.set_result(None)
            try:
                while not self._stopping.is_set():
                    connection.process_data_events(time_limit=_POLL_SECONDS)
                connection.close()
            except CONNECTION_ERRORS as exc:
                log.warning("broker_connection_lost", role="digests", host=self._host, error=repr(exc))
                self._stopping.wait(_RECONNECT_DELAYS_SECONDS[0])

    def _open(self) -> Any:
        connection = self._connect()
        try:
            channel = connection.channel()
            channel.exchange_declare(exchange=self._exchange, exchange_type="direct", durable=True)
            # Exclusive: it lives and dies with this connection, so nobody waits on a daemon that is gone.
            queue = responder_queue(self._exchange, self._host)
            channel.queue_declare(queue=queue, exclusive=True)
            channel.queue_bind(queue=queue, exchange=self._exchange,
                               routing_key=request_routing_key(self._host))
            channel.basic_qos(prefetch_count=self._prefetch)
            channel.basic_consume(queue=queue, on_message_callback=partial(self._on_request, connection))
        except BaseException:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()
            raise
        log.info("broker_connected", role="digests", host=self._host)
        return connection

    def _answer(self, request: DigestRequest) -> DigestReply:
        try:
            return answer(request, host=self._host, digest_volume=self._digest_volume)
        except Exception as exc:  # an unreadable file, say: the asker reads back instead; the daemon goes on
            log.error("digest_failed", host=self._host, pool=request.pool, volume=request.volume,
                      exc_info=True)
            return DigestReply(host=self._host, pool=request.pool, volume=request.volume,
                               algorithm=BLOCK_DIGEST_ALGORITHM, error=f"digest failed: {exc!r}"[:1000])

    def _on_request(self, connection: Any, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            request = DigestRequest.model_validate_json(body)
        except ValidationError as exc:
            log.warning("digest_request_refused", host=self._host, error=str(exc).splitlines()[0])
            channel.basic_ack(delivery_tag=method.delivery_tag)
            return
        future = self._workers.submit(self._answer, request)

        def send(done: Future[DigestReply]) -> None:
            reply = done.result()
            channel.basic_publish(
                exchange="", routing_key=properties.reply_to or "", body=reply.model_dump_json().encode(),
                properties=pika.BasicProperties(correlation_id=properties.correlation_id,
                                                content_type="application/json"),
            )
            channel.basic_ack(delivery_tag=method.delivery_tag)
            self.answered += 1
            log.info("digest_request_answered", host=self._host, pool=request.pool, volume=request.volume,
                     error=reply.error)

        def hand_back(done: Future[DigestReply]) -> None:
            # pika's connection belongs to its thread: the reply is sent from there.
            with contextlib.suppress(*CONNECTION_ERRORS, pika.exceptions.ConnectionWrongStateError):
                connection.add_callback_threadsafe(partial(send, done))

        future.add_done_callback(hand_back)


class PeerDigestClient:
    """Asks a host's daemon for its volume's digest, one short connection per question (movers run on
    several threads, and a pika connection belongs to one). Waits as long as copying may take."""

    def __init__(
        self, connect: ConnectionFactory, *, exchange: str, timeout_base_seconds: float,
        min_bytes_per_second: float,
    ) -> None:
        self._connect = connect
        self._exchange = exchange
        self._timeout_base_seconds = timeout_base_seconds
        self._min_bytes_per_second = min_bytes_per_second

    def digest(self, *, host: str, pool: str, volume: str, allocation_bytes: int) -> str | None:
        timeout_seconds = self._timeout_base_seconds + allocation_bytes / self._min_bytes_per_second
        context = {"host": host, "pool": pool, "volume": volume}
        try:
            request = DigestRequest(host=host, pool=pool, volume=volume, algorithm=BLOCK_DIGEST_ALGORITHM)
            reply = self._ask(request, timeout_seconds)
        except ValidationError as exc:
            log.info("peer_digest_unavailable", reason=str(exc).splitlines()[0], **context)
            return None
        except _NoAnswer as exc:
            log.info("peer_digest_unavailable", reason=str(exc), **context)
            return None
        if reply.digest is None or (reply.host, reply.pool, reply.volume, reply.algorithm) != (
                host, pool, volume, BLOCK_DIGEST_ALGORITHM):
            reason = reply.error or "the reply is for something else"
            log.info("peer_digest_unavailable", reason=reason, **context)
            return None
        log.info("peer_digest_received", **context)
        return reply.digest

    def _ask(self, request: DigestRequest, timeout_seconds: float) -> DigestReply:
        try:
            connection = self._connect()
        except EvacuatorError as exc:
            raise _NoAnswer(str(exc)) from exc
        try:
            return self._exchange_messages(connection, request, timeout_seconds)
        except CONNECTION_ERRORS as exc:
            raise _NoAnswer(repr(exc)) from exc
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                connection.close()

    def _exchange_messages(
        self, connection: Any, request: DigestRequest, timeout_seconds: float
    ) -> DigestReply:
        channel = connection.channel()
        channel.confirm_delivery()
        replies_queue = channel.queue_declare(queue="", exclusive=True).method.queue
        correlation_id = uuid.uuid4().hex
        got: list[bytes] = []

        def on_reply(_channel: Any, _method: Any, properties: Any, body: bytes) -> None:
            if properties.correlation_id == correlation_id:
                got.append(body)

        channel.basic_consume(queue=replies_queue, on_message_callback=on_reply, auto_ack=True)
        try:
            channel.basic_publish(
                exchange=self._exchange, routing_key=request_routing_key(request.host),
                body=request.model_dump_json().encode(), mandatory=True,
                properties=pika.BasicProperties(
                    reply_to=replies_queue, correlation_id=correlation_id, content_type="application/json",
                    # A request nobody took in time is dropped by the broker, not digested for nobody.
                    expiration=str(int(timeout_seconds * 1000)),
                ),
            )
        except pika.exceptions.UnroutableError as exc:
            raise _NoAnswer(f"no daemon of {request.host} listens") from exc
        deadline = time.monotonic() + timeout_seconds
        while not got and time.monotonic() < deadline:
            connection.process_data_events(time_limit=_POLL_SECONDS)
        if not got:
            raise _NoAnswer(f"no answer within {timeout_seconds:.0f} s")
        try:
            return DigestReply.model_validate_json(got[0])
        except ValidationError as exc:
            raise _NoAnswer(f"unreadable reply: {str(exc).splitlines()[0]}") from exc


def _reconnect_delay_seconds(failures: int) -> float:
    return _RECONNECT_DELAYS_SECONDS[min(failures, len(_RECONNECT_DELAYS_SECONDS) - 1)]


class _NoAnswer(Exception):
    """No usable reply came; the caller verifies by reading back instead."""
