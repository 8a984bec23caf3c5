"""The gate every move passes before it starts: the blast-radius guards (placement/guards.py decides, the
broker counts: peers/guard_broker.py). Moves under way are never stopped; only new ones wait.

A host's first move takes an evacuation permit, under the guards' cloud-wide lock, once the guards allow it;
the host then says it is evacuating (`evacuating_since` in its host state, so other hosts count it and space
their starts after it) and keeps the permit until its incident ends (`end`). Every later move of the incident
only checks the pause. A failed host takes a permit if one is free and goes ahead either way. While a host
is held, the gate polls every `poll_seconds`, logs each new cause (`evacuation_held`) and tells `on_hold`
(the incident service tells the tenants); `evacuation_admitted` when it goes ahead.

Fails open, like the cloud-wide transfer slots: when the broker cannot be reached, the guards cannot be
counted and the move goes ahead, saying so (`guard_unavailable`): a failing host must still be evacuated.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

import structlog

from evacuator.placement.guards import Evacuating, GuardPolicy, Hold, HoldCause, check, evacuation_slots
from evacuator.placement.model import HostState, Room, Verdict
from evacuator.placement.view import Heard

log = structlog.get_logger(__name__)

_ANNOUNCE_WAIT_SECONDS = 3.0  # for this host's own state saying "evacuating" to come back through the broker


class Releasable(Protocol):
    def release(self) -> None: ...


class GuardState(Protocol):
    """The cloud-wide pause, permits and lock (peers/guard_broker.py BrokerGuardState)."""

    def paused(self) -> object | None: ...

    def try_permit(self, slots: int) -> Releasable | None: ...

    def lock(self) -> AbstractContextManager[bool]: ...


class GuardView(Protocol):
    """The host view (peers/host_view.py HostView)."""

    def hosts(self, now: datetime) -> list[HostState]: ...

    def heard(self) -> list[Heard]: ...


class Gate(Protocol):
    """What the engine asks before a move starts."""

    def admit(self, stopping: Callable[[], bool]) -> bool:
        """True once the move may start; False only when `stopping()` became true while waiting."""
        ...

    def paused(self) -> bool:
        """Whether the cloud-wide pause holds now (False when it cannot be known: fails open). A window's
        pre-copy starts no pass while it holds."""
        ...


class OpenGate:
    """No guards (no host view, or the `move` command): every move may start."""

    def admit(self, stopping: Callable[[], bool]) -> bool:
        return True

    def paused(self) -> bool:
        return False


OnHold = Callable[[Hold], None]
# Another host holds the guards' lock for a moment (it is deciding its own start): look again, tell no one.
_BUSY = Hold(cause=HoldCause.TOO_MANY_EVACUATING, detail="another host is deciding its start")


def _nobody(hold: Hold) -> None:
    """No one to tell."""


class CloudGuard:
    """The gate of one host's daemon; `begin`/`end` bracket its incident. Thread-safe."""

    def __init__(self, *, host: str, policy: GuardPolicy, state: GuardState, view: GuardView,
                 announce: Callable[[datetime | None], None], clock: Callable[[], datetime],
                 poll_seconds: float = 0.5) -> None:  # fmt: skip
        self._host = host
        self._policy = policy
        self._state = state
        self._view = view
        self._announce = announce
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._failed = False
        self._on_hold: OnHold = _nobody
        self._permit: Releasable | None = None
        self._started = False  # admitted for this incident (with or without a permit)
        self._lock = threading.Lock()  # one worker at a time checks the guards
        self._wake = threading.Event()

    def reconfigure(self, policy: GuardPolicy, *, poll_seconds: float) -> None:
        """New guard settings (a reload): the next check uses them; a held worker looks again at once."""
        self._policy, self._poll_seconds = policy, poll_seconds
        self._wake.set()

    def begin(self, *, failed: bool, on_hold: OnHold = _nobody) -> None:
        """An incident opened (or was resumed, or its host got worse: `failed` then jumps the queue)."""
        self._failed = failed
        self._on_hold = on_hold
        self._wake.set()

    def end(self) -> None:
        """The incident ended: give the permit back and stop saying this host evacuates."""
        with self._lock:
            permit, self._permit = self._permit, None
            started, self._started = self._started, False
        if permit is not None:
            permit.release()
        if started:
            self._announce(None)
            log.info("evacuation_permit_released", host=self._host)

    def admit(self, stopping: Callable[[], bool]) -> bool:
        held: HoldCause | None = None
        began = time.monotonic()
        while not stopping():
            with self._lock:  # one worker at a time checks and takes the permit; never held while waiting,
                hold = self._check()  # or end() (the incident closing) would wait for a held move
            if hold is None:
                if held is not None:
                    log.info("evacuation_admitted", host=self._host,
                             held_seconds=round(time.monotonic() - began, 3))  # fmt: skip
                return True
            if hold is not _BUSY and hold.cause is not held:
                log.warning("evacuation_held", host=self._host, cause=str(hold.cause), detail=hold.detail,
                            until=None if hold.until is None else hold.until.isoformat())  # fmt: skip
                held = hold.cause
                self._tell(hold)
            self._wake.clear()
            self._wake.wait(self._poll_seconds)
        return False

    def paused(self) -> bool:
        try:
            return self._state.paused() is not None
        except Exception as exc:
            log.warning("guard_unavailable", host=self._host, error=repr(exc)[:300])
            return False

    def _tell(self, hold: Hold) -> None:
        try:
            self._on_hold(hold)
        except Exception as exc:  # telling tenants must never wedge the gate
            log.error("evacuation_hold_not_told", host=self._host, error=repr(exc)[:300])

    def _check(self) -> Hold | None:
        if self.paused():
            return check(me=self._host, failed=self._failed, paused=True, hosts=[], evacuating=[],
                         leaving=Room(), now=self._clock(), policy=self._policy)  # fmt: skip
        if self._started:
            return None
        try:
            return self._start()
        except Exception as exc:  # the broker went away mid-check: go ahead, not keep VMs on a sick host
            log.warning("guard_unavailable", host=self._host, error=repr(exc)[:300])
            self._started = True
            return None

    def _start(self) -> Hold | None:
        now = self._clock()
        # The cloud as it is now: hosts not heard lately are unknown, and count neither way.
        hosts = [h for h in self._view.hosts(now) if h.verdict is not Verdict.UNKNOWN]
        slots = evacuation_slots(len(hosts), self._policy)
        if self._failed:
            self._permit = self._state.try_permit(slots)
            self._begin_evacuating(now)
            return None
        # First over the view alone, without the lock: a held host says why and keeps the lock free for
        # the host that may go; then again under the lock, which makes the check and the permit one step.
        hold = self._guards(now, hosts)
        if hold is not None:
            return hold
        with self._state.lock() as locked:
            if not locked:
                return _BUSY
            now = self._clock()
            hold = self._guards(now, [h for h in self._view.hosts(now) if h.verdict is not Verdict.UNKNOWN])
            if hold is not None:
                return hold
            permit = self._state.try_permit(slots)
            if permit is None:
                return Hold(cause=HoldCause.TOO_MANY_EVACUATING,
                            detail="every evacuation permit is held by another host")  # fmt: skip
            self._permit = permit
            self._begin_evacuating(now)
        return None

    def _guards(self, now: datetime, hosts: list[HostState]) -> Hold | None:
        return check(me=self._host, failed=False, paused=False, hosts=hosts,
                     evacuating=self._evacuating({h.name for h in hosts}), leaving=self._leaving(), now=now,
                     policy=self._policy)  # fmt: skip

    def _begin_evacuating(self, now: datetime) -> None:
        """Say so in this host's state and wait (under the lock) until it came back through the broker, so
        the next host to check sees this start."""
        self._started = True
        self._announce(now)
        log.info("evacuation_permit_taken", host=self._host, failed=self._failed,
                 with_permit=self._permit is not None)  # fmt: skip
        deadline = time.monotonic() + _ANNOUNCE_WAIT_SECONDS
        while time.monotonic() < deadline:
            own = next((h for h in self._view.heard() if h.host == self._host), None)
            if own is not None and own.evacuating_since is not None:
                return
            time.sleep(0.05)

    def _evacuating(self, known: set[str]) -> list[Evacuating]:
        """The other hosts that say they evacuate, among those heard lately."""
        return [Evacuating(host=h.host, since=h.evacuating_since) for h in self._view.heard()
                if h.evacuating_since is not None and h.host != self._host and h.host in known]

    def _leaving(self) -> Room:
        """What this host's VMs take along: what its active VMs were given, and its pool's allocation."""
        own = next((h for h in self._view.heard() if h.host == self._host), None)
        if own is None:
            return Room()
        state = own.state
        return Room(memory_bytes=max(0, state.capacity.memory_bytes - state.free.memory_bytes),
                    vcpus=max(0, state.capacity.vcpus - state.free.vcpus),
                    disk_bytes=own.disk_allocation_bytes)  # fmt: skip

