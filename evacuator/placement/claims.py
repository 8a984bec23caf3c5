"""A destination's book of the room it promised to movers (claims), pure: grant, renew, release, expire.

A mover asks the destination's own daemon for room before it copies a VM (or a consistency group, as one
claim); the daemon decides here, against its live free room *and* the claims it already granted, so two
sources can never over-commit one destination. The rules:
- Grant when the claim's room fits in `free - reserve - held`, per resource; `held` sums the claims granted
  and not yet expired. Otherwise refuse with `NO_ROOM` and the room that was left (the mover re-plans).
- Function anti-affinity, decided here too: refuse with `FUNCTION_TAKEN` a claim for a VM of a function the
  host already runs (its live accounting) or holds a claim for. Placement checks the same over the host
  view, but the view lags, and two sources may each send one replica of a database to the same host.
- A claim id names one reservation. The same id from the same requester with the same room and VMs is a
  retry or a renewal: granted again without booking twice, its expiry pushed to `now + ttl`. The same id
  with other content is refused (`CLAIM_CHANGED`); the same id from another requester too (`CLAIM_ID_TAKEN`).
- A claim lasts `ttl_seconds`, at most the book's `max_ttl_seconds`; at `expires_at` it no longer counts.
- Release by id, only by its requester, idempotent (an unknown id releases nothing).
- At most `max_claims_per_requester` unexpired claims per requester: a peer cannot grow the book unbounded.

The window where a VM counts twice: once its domain runs on the destination, the host's live accounting
(`free`) already counts it, and so does its claim until the mover releases it; likewise a copy in progress
uses pool space the claim still holds. Both err on the side of refusing: a claim is released by the mover
only after the VM runs on the destination (or after a rollback), so there is never a moment where neither
counts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from evacuator.placement.model import ZERO_ROOM, FunctionKey, Room

MAX_TTL_SECONDS = 2 * 3600.0
MAX_CLAIMS_PER_REQUESTER = 256


class Refusal(StrEnum):
    """Why a claim was refused. Stable codes: they travel on the wire and the mover matches on them."""

    NO_ROOM = "no_room"
    CLAIM_ID_TAKEN = "claim_id_taken"
    CLAIM_CHANGED = "claim_changed"
    TOO_MANY_CLAIMS = "too_many_claims"
    FUNCTION_TAKEN = "function_taken"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimAsk:
    """One request for room: `requester` is the asking daemon's identity (its broker-checked user);
    `functions`: the (tenant, function) keys of the VMs it is for, which the host must not run already."""

    claim_id: str
    requester: str
    room: Room
    vm_uuids: tuple[str, ...]
    ttl_seconds: float
    functions: frozenset[FunctionKey] = frozenset()

    def __post_init__(self) -> None:
        if not self.claim_id or not self.requester:
            raise ValueError(f"a claim needs an id and a requester, got {self!r}")
        if not self.room.is_non_negative():
            raise ValueError(f"claim {self.claim_id}: room must not be negative, got {self.room!r}")
        if not self.ttl_seconds > 0:
            raise ValueError(f"claim {self.claim_id}: ttl_seconds must be positive, got {self.ttl_seconds!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """A granted claim: counts against the destination's room until `expires_at` or its release."""

    claim_id: str
    requester: str
    room: Room
    vm_uuids: tuple[str, ...]
    granted_at: datetime
    expires_at: datetime
    functions: frozenset[FunctionKey] = frozenset()

    def live(self, now: datetime) -> bool:
        return now < self.expires_at

    def same_ask(self, ask: ClaimAsk) -> bool:
        return ((self.requester, self.room, self.vm_uuids, self.functions)
                == (ask.requester, ask.room, ask.vm_uuids, ask.functions))  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Granted:
    """`available`: what is left for further claims after this one. `renewed`: a retry or a renewal."""

    claim: Claim
    renewed: bool
    available: Room


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """`available`: what was left for claims when this one came (the mover re-plans with it)."""

    code: Refusal
    available: Room
    detail: str


ClaimDecision = Granted | Refused


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimRules:
    """The destination's bounds: the room it always keeps free, the longest claim, claims per requester."""

    reserve: Room = ZERO_ROOM
    max_ttl_seconds: float = MAX_TTL_SECONDS
    max_claims_per_requester: int = MAX_CLAIMS_PER_REQUESTER

    def __post_init__(self) -> None:
        if not self.reserve.is_non_negative():
            raise ValueError(f"reserve must not be negative, got {self.reserve!r}")
        if not self.max_ttl_seconds > 0 or self.max_claims_per_requester < 1:
            raise ValueError(f"max_ttl_seconds and max_claims_per_requester must be positive, got {self!r}")


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware (UTC), got {now!r}")
    return now


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimBook:
    """The claims granted, by claim id (never mutated: every change returns a new book)."""

    rules: ClaimRules = ClaimRules()
    claims: Mapping[str, Claim] = field(default_factory=dict)

    def live(self, now: datetime) -> tuple[Claim, ...]:
        """The claims that still count at `now`, oldest first."""
        _aware(now)
        return tuple(sorted((c for c in self.claims.values() if c.live(now)),
                            key=lambda c: (c.granted_at, c.claim_id)))

    def held(self, now: datetime) -> Room:
        total = ZERO_ROOM
        for claim in self.live(now):
            total = total + claim.room
        return total

    def available(self, free: Room, now: datetime) -> Room:
        """What further claims may still get: the live free room less the reserve and the claims held."""
        return free - self.rules.reserve - self.held(now)

    def expire(self, now: datetime) -> tuple[ClaimBook, tuple[Claim, ...]]:
        """The book without the claims that expired by `now`, and those claims."""
        _aware(now)
        gone = tuple(c for c in self.claims.values() if not c.live(now))
        if not gone:
            return self, ()
        kept = {claim_id: c for claim_id, c in self.claims.items() if c.live(now)}
        return replace(self, claims=kept), gone

    def decide(self, ask: ClaimAsk, *, free: Room, now: datetime,
               running: frozenset[FunctionKey] = frozenset()) -> tuple[ClaimBook, ClaimDecision]:  # fmt: skip
        """Grant or refuse `ask` against `free`, the host's live free room (which does not count claims), and
        `running`, the functions of the VMs active on the host now."""
        book, _expired = self.expire(now)
        available = book.available(free, now)
        ttl_seconds = min(ask.ttl_seconds, self.rules.max_ttl_seconds)
        expires_at = now + timedelta(seconds=ttl_seconds)
        held = book.claims.get(ask.claim_id)
        if held is not None:
            if held.requester != ask.requester:
                return book, Refused(code=Refusal.CLAIM_ID_TAKEN, available=available,
                                     detail=f"claim id {ask.claim_id} is another requester's")
            if not held.same_ask(ask):
                return book, Refused(code=Refusal.CLAIM_CHANGED, available=available,
                                     detail=f"claim {ask.claim_id} was granted for other room or VMs")
            renewed = replace(held, expires_at=expires_at)
            return book._with(renewed), Granted(claim=renewed, renewed=True, available=available)
        mine = sum(1 for c in book.claims.values() if c.requester == ask.requester)
        if mine >= self.rules.max_claims_per_requester:
            return book, Refused(code=Refusal.TOO_MANY_CLAIMS, available=available,
                                 detail=f"{ask.requester} holds {mine} claims already")
        taken = ask.functions & running.union(*(c.functions for c in book.live(now)))
        if taken:
            named = ", ".join(f"{tenant or '-'}/{function}" for tenant, function in sorted(taken))
            return book, Refused(code=Refusal.FUNCTION_TAKEN, available=available,
                                 detail=f"claim {ask.claim_id}: this host already runs or expects a VM of "
                                        f"function {named}"[:500])  # fmt: skip
        if not ask.room.fits_in(available):
            return book, Refused(code=Refusal.NO_ROOM, available=available,
                                 detail=f"claim {ask.claim_id} needs {ask.room}, {available} is left")
        claim = Claim(claim_id=ask.claim_id, requester=ask.requester, room=ask.room, vm_uuids=ask.vm_uuids,
                      granted_at=now, expires_at=expires_at, functions=ask.functions)
        return book._with(claim), Granted(claim=claim, renewed=False, available=available - ask.room)

    def release(self, claim_id: str, *, requester: str) -> tuple[ClaimBook, Claim | None]:
        """The book without `requester`'s claim `claim_id`, and that claim; unchanged and None when there is
        none (released already, expired, never granted, or another requester's)."""
        held = self.claims.get(claim_id)
        if held is None or held.requester != requester:
            return self, None
        return replace(self, claims={k: c for k, c in self.claims.items() if k != claim_id}), held

    def _with(self, claim: Claim) -> ClaimBook:
        return replace(self, claims={**self.claims, claim.claim_id: claim})
