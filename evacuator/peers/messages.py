"""The peers exchange's wire: who is who, digest requests and replies, the "taken" notice, the queue names,
and the pure answer to a digest request.

Every host's daemon is its own broker user (`host.<name>` by default, made by `evacuator host add`), and every
message between daemons carries its sender's user as `user_id`, which the broker checks against the
connection's user: a daemon acts only on requests from its peers' users, and an asker believes a reply only
from the user of the host it asked (PeerTrust). Requests go to the durable topic exchange `<peers_exchange>`
(in the broker's peers vhost, apart from every tenant) with routing key `digest.<host>`, bound to the
exclusive queue `<peers_exchange>.digest.<host>` of that host's daemon (it vanishes with the daemon, so a
request to a stopped one is returned at once, not left waiting); a host's topic permissions let it bind only
its own key, so no host reads another's requests. Replies go to the asker's exclusive queue.
A digest request has no message type; a ticket request for the data channel (ReceiveRequest and its
ReceiveTicket: evacuator/transfer/wire.py) has the type `receive` and the same routing key, and so do a
claim on the host's room (ClaimRequest, type `claim`, answered by a ClaimReply) and its release
(ReleaseRequest, type `release`, answered by a ReleaseReply): evacuator/peers/claim_desk.py.

A request whose header `evacuator-taken` is true is first answered by a "taken" notice (message type
`taken`) naming the connection of the daemon that took it, whose exclusive queue
`<peers_exchange>.alive.<host>.<incarnation>` lives exactly as long as that connection: so an asker
notices a daemon that went away with its request even when a restarted one already serves the same host.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from evacuator.errors import EvacuatorError
from evacuator.peers.host_users import HOST_USER_PREFIX, host_user
from evacuator.placement.model import Room
from evacuator.transfer.digests import BLOCK_DIGEST_ALGORITHM
from evacuator.transfer.wire import RECEIVE_TYPE, ReceiveRequest, ReceiveTicket
from notifiers.topology import check_word

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$"  # libvirt pool and volume names the evacuator creates
_HOST = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_HOST_NAME = re.compile(_HOST)
_CLAIM_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_REASON = r"^[a-z][a-z_]{0,63}$"  # a stable snake_case code: an asker takes one it does not know as a refusal
_VM_UUID = r"^[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}$"
_MAX_BYTES = 1 << 60  # 1 EiB: any real host's memory or pool, far below what a 64-bit sum overflows at
_MAX_VCPUS = 1 << 20
_FunctionName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^\S+$")]
MAX_CLAIM_VMS = 256  # a consistency group, claimed as one
MAX_CLAIM_TTL_SECONDS = 86_400  # the wire's bound; each destination bounds it further (claims.ClaimRules)
CLAIM_TYPE = "claim"
RELEASE_TYPE = "release"

TAKEN_HEADER = "evacuator-taken"
TAKEN_TYPE = "taken"

VolumeDigester = Callable[[str, str, str], str | None]
"""(pool, volume, requester's broker user) -> the digest of this host's own file, None when this host cannot
read it itself; an EvacuatorError when it will not (no open transfer from that requester, say)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerTrust:
    """Who is who between daemons: this daemon's own broker user, sent as `user_id` with every message, and
    its peers' users by host name. In a lab all hosts may share one user; in production each has its own.
    With `any_host` (placement.scope cloud) every host of the cloud counts as a peer, known by its user
    `host.<name>`, which only `evacuator host add` makes (a tenant's name holds no dot)."""

    own_user: str
    peer_users: Mapping[str, str]
    any_host: bool = False

    @classmethod
    def shared(cls, user: str, hosts: Iterable[str]) -> PeerTrust:
        """Every host's daemon the same broker user `user` (a lab's, or an older deployment's)."""
        return cls(own_user=user, peer_users=dict.fromkeys(hosts, user))

    def user_of(self, host: str) -> str | None:
        """The broker user a reply from `host`'s daemon must carry; None for a host that is no peer."""
        user = self.peer_users.get(host)
        if user is None and self.any_host and _HOST_NAME.match(host):
            return host_user(host)
        return user

    def is_peer(self, user: str | None) -> bool:
        """Whether a request published as `user` (the broker-checked user_id) comes from a peer's daemon."""
        if user is None:
            return False
        if user in self.peer_users.values():
            return True
        name = user.removeprefix(HOST_USER_PREFIX)
        return self.any_host and user.startswith(HOST_USER_PREFIX) and bool(_HOST_NAME.match(name))


class DigestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(pattern=_HOST)
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


class WireRoom(BaseModel):
    """Room on the wire: memory and pool bytes, vCPUs; never negative (an over-committed host sends 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    memory_bytes: int = Field(ge=0, le=_MAX_BYTES)
    vcpus: int = Field(ge=0, le=_MAX_VCPUS)
    disk_bytes: int = Field(ge=0, le=_MAX_BYTES)

    @classmethod
    def of(cls, room: Room) -> WireRoom:
        return cls(memory_bytes=min(max(room.memory_bytes, 0), _MAX_BYTES),
                   vcpus=min(max(room.vcpus, 0), _MAX_VCPUS),
                   disk_bytes=min(max(room.disk_bytes, 0), _MAX_BYTES))

    def room(self) -> Room:
        return Room(memory_bytes=self.memory_bytes, vcpus=self.vcpus, disk_bytes=self.disk_bytes)


class ClaimRequest(BaseModel):
    """Reserve `room` on `host` for `vm_uuids` (one VM, or a consistency group as one claim) for
    `ttl_seconds`, which that host may shorten. Asking again with the same claim id and content renews it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1] = 1
    host: str = Field(pattern=_HOST)
    claim_id: str = Field(pattern=_CLAIM_ID)
    vm_uuids: tuple[Annotated[str, Field(pattern=_VM_UUID)], ...] = Field(min_length=1,
                                                                          max_length=MAX_CLAIM_VMS)
    memory_bytes: int = Field(ge=0, le=_MAX_BYTES)
    vcpus: int = Field(ge=0, le=_MAX_VCPUS)
    disk_bytes: int = Field(ge=0, le=_MAX_BYTES)
    ttl_seconds: int = Field(ge=1, le=MAX_CLAIM_TTL_SECONDS)
    # [tenant ("" for none), function] of each VM that has a function: the host refuses (function_taken) one
    # it already runs or holds a claim for (anti-affinity, decided where every claim is seen).
    functions: tuple[tuple[Annotated[str, Field(max_length=128)], _FunctionName], ...] = Field(
        default=(), max_length=MAX_CLAIM_VMS)

    @property
    def room(self) -> Room:
        return Room(memory_bytes=self.memory_bytes, vcpus=self.vcpus, disk_bytes=self.disk_bytes)


class ClaimReply(BaseModel):
    """`granted`, for `ttl_seconds` from now (renew before it ends), or refused with a stable `reason` code
    and a `detail` for people. `available`: the room left for further claims, when the host knows it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1] = 1
    host: str = Field(max_length=63)
    claim_id: str = Field(max_length=128)
    granted: bool
    reason: str | None = Field(default=None, pattern=_REASON)
    detail: str | None = Field(default=None, max_length=1000)
    available: WireRoom | None = None
    ttl_seconds: int | None = Field(default=None, ge=1, le=MAX_CLAIM_TTL_SECONDS)


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1] = 1
    host: str = Field(pattern=_HOST)
    claim_id: str = Field(pattern=_CLAIM_ID)


class ReleaseReply(BaseModel):
    """`released`: the claim was held and is no more; False when there was none to release (already
    released or expired, never granted, another requester's) or with a refusal `reason`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_version: Literal[1] = 1
    host: str = Field(max_length=63)
    claim_id: str = Field(max_length=128)
    released: bool
    reason: str | None = Field(default=None, pattern=_REASON)
    detail: str | None = Field(default=None, max_length=1000)


PeerRequest = DigestRequest | ReceiveRequest | ClaimRequest | ReleaseRequest
REQUEST_TYPES: Mapping[str | None, type[PeerRequest]] = {
    None: DigestRequest, RECEIVE_TYPE: ReceiveRequest, CLAIM_TYPE: ClaimRequest, RELEASE_TYPE: ReleaseRequest}
"""The request each message type carries; an unknown type is read as a digest request (as before types)."""


def alive_queue(exchange: str, host: str, incarnation: str) -> str:
    return f"{exchange}.alive.{check_word('host', host)}.{incarnation}"


def request_routing_key(host: str) -> str:
    return f"digest.{check_word('host', host)}"


def responder_queue(exchange: str, host: str) -> str:
    return f"{exchange}.{request_routing_key(host)}"


def declare_exchange(channel: Any, exchange: str) -> None:
    """A topic exchange: topic permissions bound what each host may bind (read) and publish (write)."""
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)


def answer(
    request: DigestRequest, *, host: str, requester: str, digest_volume: VolumeDigester
) -> DigestReply:
    """The reply to one request from `requester` (a peer's broker user): pure apart from `digest_volume`,
    whose failures become the reply's error."""

    def refuse(error: str) -> DigestReply:
        return DigestReply(host=host, pool=request.pool, volume=request.volume,
                           algorithm=BLOCK_DIGEST_ALGORITHM, error=error)

    if request.host != host:
        return refuse(f"this is {host}, not {request.host}")
    if request.algorithm != BLOCK_DIGEST_ALGORITHM:
        return refuse(f"unknown digest algorithm {request.algorithm!r}")
    try:
        digest = digest_volume(request.pool, request.volume, requester)
    except EvacuatorError as exc:
        return refuse(str(exc))
    if digest is None:
        return refuse("this host does not see the volume's file")
    return DigestReply(host=host, pool=request.pool, volume=request.volume, algorithm=BLOCK_DIGEST_ALGORITHM,
                       digest=digest)


def refusal(
    request: PeerRequest, *, host: str, reason: str, detail: str
) -> DigestReply | ReceiveTicket | ClaimReply | ReleaseReply:
    """The reply that refuses `request` (`reason`: a snake_case code, for claims and releases)."""
    detail = detail[:1000]
    if isinstance(request, ClaimRequest):
        return ClaimReply(host=host, claim_id=request.claim_id, granted=False, reason=reason, detail=detail)
    if isinstance(request, ReleaseRequest):
        return ReleaseReply(host=host, claim_id=request.claim_id, released=False, reason=reason,
                            detail=detail)
    if isinstance(request, ReceiveRequest):
        return ReceiveTicket(host=host, pool=request.pool, volume=request.volume, error=detail)
    return DigestReply(host=host, pool=request.pool, volume=request.volume, algorithm=BLOCK_DIGEST_ALGORITHM,
                       error=detail)
