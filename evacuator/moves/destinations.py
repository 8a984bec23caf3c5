"""Where one move or one consistency group goes: the seam the runners ask, and the admin's static peers.

A runner asks `choose(records, tried)` for a destination other than the hosts it already tried, and gets
either a `Held` destination, a context manager whose exit gives back whatever was reserved there (a claim on
the destination's room, moves/cloud_destinations.py), or `Nowhere` with a stable reason the tenant is told.
The runner keeps a destination held until its move ended: the VM verified running there, or rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from evacuator.moves.state import MoveRecord

# Stable reasons a move has nowhere to go (placement's Reason values, and the static list's own).
NO_CAPACITY = "no_capacity"
NO_HEALTHY_HOST = "no_healthy_host"
ANTI_AFFINITY = "anti_affinity"
NO_PEER_LEFT = "no_peer_left"  # every configured peer was tried
VM_UNREADABLE = "vm_unreadable"  # the VM's size could not be read from the source


def _nothing_to_release() -> None:
    """A destination that holds nothing (a static peer) releases nothing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Held:
    """A destination, with what the mover holds there (a claim id, or None) until the move ends."""

    host: str
    claim_id: str | None = None
    release: Callable[[], None] = _nothing_to_release

    def __enter__(self) -> Held:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()


@dataclass(frozen=True, slots=True, kw_only=True)
class Nowhere:
    """No destination: `reason` is a stable code (above), `detail` says why for humans."""

    reason: str
    detail: str

    @property
    def message(self) -> str:
        """What the journal and the tenant's evacuation_failed say: the code first, so both can match it."""
        return f"{self.reason}: {self.detail}"


Choice = Held | Nowhere


class Destinations(Protocol):
    """Chooses where one VM, or one consistency group (all its records together), goes."""

    def choose(self, records: Sequence[MoveRecord], tried: Collection[str], *,
               only: str | None = None) -> Choice:  # fmt: skip
        """A destination that is none of `tried`, held; or Nowhere. `only`: that host or none (a move
        back)."""
        ...

    def resume(self, records: Sequence[MoveRecord], host: str) -> Held:
        """The journaled destination of a move that already began: held there again as far as it can be
        (a move under way goes on where its journal says, whatever the host answers now)."""
        ...


class StaticPeers:
    """The admin's `peers` list, in order: what the daemon does without the host view."""

    def __init__(self, peers: Sequence[str]) -> None:
        self._peers = tuple(peers)

    def choose(self, records: Sequence[MoveRecord], tried: Collection[str], *,
               only: str | None = None) -> Choice:  # fmt: skip
        if only is not None:  # a move back goes to its origin, listed or not (trusted as a host of the cloud)
            return Held(host=only) if only not in tried else Nowhere(reason=NO_PEER_LEFT,
                                                                     detail=f"{only} was tried")  # fmt: skip
        peer = next((p for p in self._peers if p not in tried), None)
        if peer is None:
            detail = "every configured peer was tried" if tried else "no destination host is configured"
            return Nowhere(reason=NO_PEER_LEFT, detail=detail)
        return Held(host=peer)

    def resume(self, records: Sequence[MoveRecord], host: str) -> Held:
        return Held(host=host)
