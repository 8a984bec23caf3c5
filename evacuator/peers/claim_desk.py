"""This host's daemon answering its peers' claims on its room: the claim book (placement/claims.py, pure)
held under a lock, decided against the host's live free room.

Why a claim: placement plans from every host's published room, which lags; two sources evacuating at once
would both see the same free room on one destination and fill it twice. The destination's own daemon is the
one place that sees every claim on it, so it decides (`claim_granted`, `claim_refused`), and the mover
releases its claim when the move ends, done or rolled back (`claim_released`); a mover that dies leaves a
claim that expires after its TTL (`claim_expired`, logged when the daemon next looks at its book).

Claims are the requester's: keyed by its claim id, kept with its broker-checked user, released only by it.
The live free room is read for every claim, under the lock, so a release racing a claim cannot make a VM
count neither in the live room nor in a claim. A daemon built without a desk answers claims with the
refusal `claims_not_served` (responder.py): a mover never mistakes an unwired daemon for a full one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from evacuator.hypervisor.room import RoomReader
from evacuator.peers.messages import ClaimReply, ClaimRequest, ReleaseReply, ReleaseRequest, WireRoom
from evacuator.placement.claims import Claim, ClaimAsk, ClaimBook, ClaimRules, Granted
from evacuator.placement.model import FunctionKey, PlacementPolicy, Room

log = structlog.get_logger(__name__)

WRONG_HOST = "wrong_host"
ROOM_UNKNOWN = "room_unknown"
CLAIMS_NOT_SERVED = "claims_not_served"
NOT_A_PEER = "not_a_peer"
BUSY = "busy"
CLAIM_FAILED = "claim_failed"



@dataclass(frozen=True, slots=True, kw_only=True)
class LiveRoom:
    """This host's free room for guests now (libvirt's accounting, capped by settings; claims not counted),
    and the (tenant, function) keys of its active VMs, which no claim may bring a second VM of."""

    free: Room
    functions: frozenset[FunctionKey] = frozenset()


FreeRoom = Callable[[], LiveRoom]


def free_above_reserve(room: RoomReader, policy: PlacementPolicy) -> FreeRoom:
    """This host's live free room less the reserve placement keeps on it (`policy.reserve_on` its capacity):
    a claim is granted against the same room the movers planned with, never into the reserve."""

    def free() -> LiveRoom:
        read = room.read_room()
        capacity = Room(memory_bytes=read.memory_capacity_bytes, vcpus=read.vcpus_capacity,
                        disk_bytes=read.pool_capacity_bytes)
        left = Room(memory_bytes=read.memory_free_bytes, vcpus=read.vcpus_free,
                    disk_bytes=read.pool_available_bytes)
        return LiveRoom(free=left - policy.reserve_on(capacity), functions=read.functions)

    return free


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ClaimDesk:
    """Grants, renews and releases claims on this host's room; safe to call from any thread."""

    def __init__(self, *, host: str, free_room: FreeRoom, rules: ClaimRules | None = None,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self._host = host
        self._free_room = free_room
        self._clock = clock
        self._book = ClaimBook(rules=rules or ClaimRules())
        self._lock = threading.Lock()

    def answer(self, request: ClaimRequest | ReleaseRequest, requester: str) -> ClaimReply | ReleaseReply:
        if isinstance(request, ClaimRequest):
            return self.claim(request, requester)
        return self.release(request, requester)

    def claim(self, request: ClaimRequest, requester: str) -> ClaimReply:
        context = {"host": self._host, "claim_id": request.claim_id, "requester": requester,
                   "vm_uuids": list(request.vm_uuids), "memory_bytes": request.memory_bytes,
                   "vcpus": request.vcpus, "disk_bytes": request.disk_bytes}

        def refuse(reason: str, detail: str, available: Room | None = None) -> ClaimReply:
            log.info("claim_refused", reason=reason, detail=detail, **context)
            return ClaimReply(host=self._host, claim_id=request.claim_id, granted=False, reason=reason,
                              detail=detail[:1000], available=None if available is None else
                              WireRoom.of(available))  # fmt: skip

        if request.host != self._host:
            return refuse(WRONG_HOST, f"this is {self._host}, not {request.host}")
        ask = ClaimAsk(claim_id=request.claim_id, requester=requester, room=request.room,
                       vm_uuids=request.vm_uuids, ttl_seconds=request.ttl_seconds,
                       functions=frozenset(request.functions))
        with self._lock:
            now = self._expire()
            try:
                live = self._free_room()
            except Exception as exc:  # libvirt unreachable, say: refuse rather than grant blind
                log.warning("claim_room_unknown", host=self._host, error=repr(exc)[:300])
                return refuse(ROOM_UNKNOWN, f"{self._host} cannot read its free room: {exc!r}")
            self._book, decision = self._book.decide(ask, free=live.free, now=now, running=live.functions)
        if not isinstance(decision, Granted):
            return refuse(decision.code.value, decision.detail, decision.available)
        claim = decision.claim
        ttl_seconds = max(1, int((claim.expires_at - now).total_seconds()))
        log.info("claim_granted", renewed=decision.renewed, ttl_seconds=ttl_seconds,
                 expires_at=claim.expires_at.isoformat(), **context)
        return ClaimReply(host=self._host, claim_id=claim.claim_id, granted=True, ttl_seconds=ttl_seconds,
                          available=WireRoom.of(decision.available))

    def release(self, request: ReleaseRequest, requester: str) -> ReleaseReply:
        if request.host != self._host:
            return ReleaseReply(host=self._host, claim_id=request.claim_id, released=False, reason=WRONG_HOST,
                                detail=f"this is {self._host}, not {request.host}")
        with self._lock:
            self._expire()
            self._book, released = self._book.release(request.claim_id, requester=requester)
        if released is None:
            log.info("claim_release_unknown", host=self._host, claim_id=request.claim_id, requester=requester)
            return ReleaseReply(host=self._host, claim_id=request.claim_id, released=False,
                                detail="no such claim of this requester (released, expired or never granted)")
        log.info("claim_released", **_claim_context(self._host, released))
        return ReleaseReply(host=self._host, claim_id=request.claim_id, released=True)

    def held(self) -> tuple[Claim, ...]:
        """The claims that count now, oldest first (for the host view and tests)."""
        with self._lock:
            return self._book.live(self._expire())

    def expire(self) -> None:
        """Forget (and log) the claims that expired; any claim or release does this too."""
        with self._lock:
            self._expire()

    def _expire(self) -> datetime:
        """Under the lock: drops the expired claims, logging each, and gives the time it used."""
        now = self._clock()
        self._book, gone = self._book.expire(now)
        for claim in gone:
            log.warning("claim_expired", **_claim_context(self._host, claim))
        return now


def _claim_context(host: str, claim: Claim) -> dict[str, object]:
    return {"host": host, "claim_id": claim.claim_id, "requester": claim.requester,
            "vm_uuids": list(claim.vm_uuids), "memory_bytes": claim.room.memory_bytes,
            "vcpus": claim.room.vcpus, "disk_bytes": claim.room.disk_bytes}
