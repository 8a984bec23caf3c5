"""Hand-written fakes of the blast-radius guards' broker state and host view (moves/guard.py's Protocols)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from evacuator.placement.model import HostState
from evacuator.placement.view import Heard

GIB = 1 << 30
_SENT_AT = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class FakeGuardState:
    """The broker's guard state in memory: a pause flag, `slots` permits, the lock."""

    pause: object | None = None
    held: set[int] = field(default_factory=set)
    unreachable: bool = False

    def paused(self) -> object | None:
        if self.unreachable:
            raise ConnectionError("broker down")
        return self.pause

    def try_permit(self, slots: int) -> _Permit | None:
        free = next((k for k in range(slots) if k not in self.held), None)
        if free is None:
            return None
        self.held.add(free)
        return _Permit(self, free)

    @contextmanager
    def lock(self) -> Iterator[bool]:
        yield True


@dataclass
class _Permit:
    state: FakeGuardState
    index: int

    def release(self) -> None:
        self.state.held.discard(self.index)


class FakeGuardView:
    def __init__(self, states: list[HostState], evacuating: dict[str, datetime] | None = None) -> None:
        self.states = states
        self.evacuating = evacuating or {}

    def hosts(self, now: datetime) -> list[HostState]:
        return list(self.states)

    def heard(self) -> list[Heard]:
        return [Heard(state=s, incarnation="0" * 16, sequence=0, sent_at=_SENT_AT,
                      evacuating_since=self.evacuating.get(s.name), disk_allocation_bytes=300 * GIB)
                for s in self.states]  # fmt: skip
