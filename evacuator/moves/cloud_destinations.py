"""The cloud's destination for a move: placement over every host's latest state, then a claim on the chosen
host's room answered by its own daemon; a refused or unanswered claim rules that host out and plans again.

Why both: the host view lags by up to an interval, and other sources plan over the same view, so the plan
alone could fill one destination twice (or send two replicas of one function there); the destination's
daemon sees every claim on it and decides. A refusal that says why (`no_room` with the room left,
`function_taken`) corrects that host in this move's plan, so the next plan knows what the host said and the
tenant hears the real reason (`no_capacity`, `anti_affinity`) when nothing else is left; any other refusal,
or a second one, rules the host out. An unanswered claim is never taken for a yes (docs/moves.md, "Claims"):
that host is ruled out for this move. Its claim is released anyway, in case it was granted and only the
answer was lost; the TTL is the backstop.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

import structlog

from evacuator.errors import EvacuatorError
from evacuator.hypervisor.model import parse_definition
from evacuator.moves.attempts import OpenHost
from evacuator.moves.destinations import VM_UNREADABLE, Choice, Held, Nowhere
from evacuator.moves.state import MoveRecord
from evacuator.placement.claims import Refusal
from evacuator.placement.model import FunctionKey, HostState, PlacementPolicy, Reason, Room, VmDemand
from evacuator.placement.place import plan

log = structlog.get_logger(__name__)

_CLAIM_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_DETAILS = {
    Reason.NO_HEALTHY_HOST: "no host may take VMs now (every one sick, stale, quarantined, in maintenance, "
                            "refusing, or already tried)",
    Reason.NO_CAPACITY: "no host has room for it above its reserve",
    Reason.ANTI_AFFINITY: "every host with room already runs a VM of the same function",
}


class HostStates(Protocol):
    """Every host's latest state as this daemon hears it (peers/host_view.py HostView)."""

    def hosts(self, now: datetime) -> list[HostState]: ...


class ClaimAnswer(Protocol):
    """What a claim came to (peers/rpc.py ClaimOutcome): granted, or why not (refused or unanswered)."""

    @property
    def granted(self) -> bool: ...

    @property
    def reason(self) -> str | None: ...

    @property
    def available(self) -> Room | None: ...


class Claims(Protocol):
    """Claims on a host's room, answered by that host's daemon (peers/rpc.py PeerClient)."""

    def claim(self, host: str, *, claim_id: str, room: Room, vm_uuids: Sequence[str], ttl_seconds: int,
              functions: Collection[FunctionKey] = ()) -> ClaimAnswer: ...  # fmt: skip

    def release(self, host: str, claim_id: str) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudConfig:
    """`source`: this host; `reachable`: whether this daemon can open a host's libvirt and ask its daemon."""

    source: str
    policy: PlacementPolicy
    claim_ttl_seconds: int
    reachable: Callable[[str], bool]

    @property
    def renew_every_seconds(self) -> float:
        """A held claim is claimed again this often, so a copy longer than its TTL keeps its room; a third of
        the TTL leaves two renewals' worth of slack for a slow or briefly unreachable destination."""
        return self.claim_ttl_seconds / 3


def claim_id_for(source: str, records: Sequence[MoveRecord]) -> str:
    """One id per move attempt (a retry or a restart claims again with it, renewing instead of booking
    twice): the source, the VM's uuid or the group's name, and the attempt (a later incident's move)."""
    first = records[0]
    what = first.vm_uuid if first.group is None else f"group-{first.group}"
    return _CLAIM_ID_UNSAFE.sub("-", f"{source}.{what}.{first.attempt}")[:128]


class CloudDestinations:
    """Destinations over the host view, held by claims (the Destinations seam of moves/destinations.py)."""

    def __init__(self, *, config: CloudConfig, view: HostStates, claims: Claims, open_host: OpenHost,
                 clock: Callable[[], datetime]) -> None:  # fmt: skip
        self._config = config
        self._view = view
        self._claims = claims
        self._open_host = open_host
        self._clock = clock

    def choose(self, records: Sequence[MoveRecord], tried: Collection[str], *,
               only: str | None = None) -> Choice:  # fmt: skip
        uuids = [r.vm_uuid for r in records]
        try:
            demands = self._demands(records)
        except EvacuatorError as exc:
            return Nowhere(reason=VM_UNREADABLE, detail=f"its size cannot be read on {self._config.source}: "
                                                        f"{exc}"[:500])  # fmt: skip
        ruled_out = set(tried)
        told: dict[str, HostState] = {}  # hosts as their refusals described them
        if only is not None:  # a move back: its origin, if placement and that host's daemon agree, or nowhere
            ruled_out |= {h.name for h in self._view.hosts(self._clock()) if h.name != only}
        while True:
            choice = self._plan(demands, ruled_out, told)
            if isinstance(choice, Nowhere):
                log.warning("destination_none", vm_uuids=uuids, reason=choice.reason,
                            ruled_out=sorted(ruled_out), corrected=sorted(told))
                return choice
            name, state = choice
            held = self._claim(records, demands, name)
            if isinstance(held, Held):
                log.info("destination_chosen", vm_uuids=uuids, destination=name, claim_id=held.claim_id)
                return held
            corrected = None if name in told else corrected_by(state, held, demands, self._config.policy)
            if corrected is None:
                ruled_out.add(name)
            else:
                told[name] = corrected

    def resume(self, records: Sequence[MoveRecord], host: str) -> Held:
        try:
            demands = self._demands(records)
        except EvacuatorError as exc:
            log.warning("destination_claim_skipped", destination=host, error=str(exc)[:300])
            return Held(host=host)
        held = self._claim(records, demands, host)
        return held if isinstance(held, Held) else Held(host=host)

    def _plan(self, demands: Sequence[VmDemand], ruled_out: set[str],
              told: Mapping[str, HostState]) -> tuple[str, HostState] | Nowhere:  # fmt: skip
        now = self._clock()
        hosts = [told.get(h.name, h) for h in self._view.hosts(now)
                 if h.name not in ruled_out and self._config.reachable(h.name)]
        placement = plan(hosts, demands, self._config.policy, now)
        for demand in demands:
            reason = placement.unplaced.get(demand.uuid)
            if reason is not None:
                return Nowhere(reason=reason.value, detail=_DETAILS[reason])
        chosen = placement.assignments[demands[0].uuid]
        return chosen, next(h for h in hosts if h.name == chosen)

    def _claim(self, records: Sequence[MoveRecord], demands: Sequence[VmDemand],
               host: str) -> Held | ClaimAnswer:  # fmt: skip
        claim_id = claim_id_for(self._config.source, records)
        room = Room()
        for demand in demands:
            room = room + demand.room
        functions = {key for d in demands if (key := d.function_key) is not None}

        def claim() -> ClaimAnswer:
            return self._claims.claim(host, claim_id=claim_id, room=room, vm_uuids=[d.uuid for d in demands],
                                      ttl_seconds=self._config.claim_ttl_seconds, functions=functions)

        answer = claim()
        if answer.granted:
            renewal = _Renewal(claim, every_seconds=self._config.renew_every_seconds, host=host,
                               claim_id=claim_id)  # fmt: skip

            def release() -> None:
                renewal.stop()
                self._release(host, claim_id)

            return Held(host=host, claim_id=claim_id, release=release)
        log.info("destination_ruled_out", destination=host, claim_id=claim_id, reason=answer.reason)
        self._release(host, claim_id)  # a grant whose answer was lost holds room until its TTL otherwise
        return answer

    def _release(self, host: str, claim_id: str) -> None:
        self._claims.release(host, claim_id)

    def _demands(self, records: Sequence[MoveRecord]) -> list[VmDemand]:
        """What each VM needs on a destination: memory and vCPUs as defined, and the bytes its disks hold
        now (the copy is sparse-aware: only allocated extents travel and take pool space)."""
        demands = []
        with self._open_host(self._config.source) as source:
            for record in records:
                definition = parse_definition(source.vm_definition_xml(record.vm_uuid))
                disk_bytes = 0
                for ref in definition.volumes:
                    volume = source.find_volume(ref.pool, ref.volume)
                    disk_bytes += 0 if volume is None else volume.allocation_bytes
                demands.append(VmDemand(
                    uuid=record.vm_uuid, source=self._config.source, memory_bytes=definition.memory_bytes,
                    vcpus=definition.vcpus, disk_bytes=disk_bytes, tenant=record.tenant, group=record.group,
                    function=definition.facts.function, priority=record.priority,
                ))  # fmt: skip
        return demands


def corrected_by(state: HostState, answer: ClaimAnswer, demands: Sequence[VmDemand],
                 policy: PlacementPolicy) -> HostState | None:  # fmt: skip
    """`state` as `answer`, a refusal, describes the host: with the room it said it had left (placement takes
    the reserve off again, so its free room is that plus the reserve), or running the functions it said it
    runs or expects. None for a refusal that says neither: that host is ruled out."""
    if answer.reason == Refusal.NO_ROOM and answer.available is not None:
        return replace(state, free=answer.available + policy.reserve_on(state.capacity))
    if answer.reason == Refusal.FUNCTION_TAKEN:
        keys = {key for d in demands if (key := d.function_key) is not None}
        return replace(state, functions=state.functions | keys) if keys else None
    return None


class _Renewal:
    """Claims again, with the same id and content (the destination renews it), every `every_seconds` until
    stopped, on a thread of its own: the move's thread is busy copying. A refused or unanswered renewal is
    logged and tried again at the next turn; the move goes on (the claim was granted: the room was there)."""

    def __init__(self, renew: Callable[[], ClaimAnswer], *, every_seconds: float, host: str,
                 claim_id: str) -> None:  # fmt: skip
        self._renew = renew
        self._every_seconds = every_seconds
        self._context = {"destination": host, "claim_id": claim_id}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"claim-renewal-{claim_id}"[:60], daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._every_seconds):
            try:
                answer = self._renew()
            except Exception as exc:  # a renewal must never end the thread while the move goes on
                log.warning("claim_renewal_failed", error=str(exc)[:300], **self._context)
                continue
            if not answer.granted:
                log.warning("claim_renewal_failed", error=answer.reason, **self._context)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
