"""Which queued move runs next, pure: priority order under the per-destination concurrency cap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Unit:
    """What runs as one: a single VM's move, or a whole consistency group's (`key` is "group:<name>")."""

    key: str
    members: tuple[str, ...]
    priority: int
    seq: int
    # Journaled earlier (a resumed move keeps its destination); None: the first peer with room, or the
    # runner's choice when the queue picks none.
    destination: str | None


def next_unit(
    waiting: Sequence[Unit], incoming: Mapping[str, int], peers: Sequence[str] | None, *,
    max_incoming_per_peer: int,
) -> tuple[Unit, str | None] | None:
    """The highest-priority unit (first queued among equals) that a destination has room for, with it.

    The outgoing cap is the number of workers; this adds the incoming cap, so one peer is never flooded
    while others idle: a unit without a journaled destination takes the first configured peer with room.
    With `peers` None the runner chooses (and claims) a destination itself: such a unit runs at once, with
    None, and the transfer slots keep each destination's incoming cap.
    """
    for unit in sorted(waiting, key=lambda u: (-u.priority, u.seq)):
        if unit.destination is None and peers is None:
            return unit, None
        candidates = (unit.destination,) if unit.destination is not None else tuple(peers or ())
        for peer in candidates:
            if incoming.get(peer, 0) < max_incoming_per_peer:
                return unit, peer
    return None
