"""The peers exchange's wire: digest requests and replies, the "taken" notice, the queue names, and the pure
answer to a digest request.

Requests go to the durable direct exchange `<peers_exchange>` with routing key `digest.<host>`, bound to the
exclusive queue `<peers_exchange>.digest.<host>` of that host's daemon (it vanishes with the daemon, so a
request to a stopped one is returned at once, not left waiting). Replies go to the asker's exclusive queue.
A digest request has no message type; a ticket request for the data channel (ReceiveRequest and its
ReceiveTicket: evacuator/transfer/wire.py) has the type `receive` and the same routing key.

A request whose header `evacuator-taken` is true is first answered by a "taken" notice (message type
`taken`) naming the connection of the daemon that took it, whose exclusive queue
`<peers_exchange>.alive.<host>.<incarnation>` lives exactly as long as that connection: so an asker
notices a daemon that went away with its request even when a restarted one already serves the same host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evacuator.errors import EvacuatorError
from evacuator.transfer.digests import BLOCK_DIGEST_ALGORITHM
from evacuator.transfer.wire import ReceiveRequest
from notifiers.topology import check_word

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$"  # libvirt pool and volume names the evacuator creates

TAKEN_HEADER = "evacuator-taken"
TAKEN_TYPE = "taken"

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


class DigestTaken(BaseModel):
    """Sent at once by the daemon that took a request: which of its connections holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    incarnation: str = Field(pattern=r"^[0-9a-f]{16,32}$")


PeerRequest = DigestRequest | ReceiveRequest


def alive_queue(exchange: str, host: str, incarnation: str) -> str:
    return f"{exchange}.alive.{check_word('host', host)}.{incarnation}"


def request_routing_key(host: str) -> str:
    return f"digest.{check_word('host', host)}"


def responder_queue(exchange: str, host: str) -> str:
    return f"{exchange}.{request_routing_key(host)}"


def declare_exchange(channel: Any, exchange: str) -> None:
    channel.exchange_declare(exchange=exchange, exchange_type="direct", durable=True)


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
