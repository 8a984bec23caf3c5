"""The move queue's choice, as a table: priority first, then queue order, within the incoming cap."""

from __future__ import annotations

import pytest

from evacuator.moves.queue import Unit, next_unit


def unit(key: str, priority: int = 0, seq: int = 0, destination: str | None = None) -> Unit:
    return Unit(key=key, members=(key,), priority=priority, seq=seq, destination=destination)


PEERS = ("host-b", "host-c")


@pytest.mark.parametrize(("waiting", "incoming", "expected"), [
    ([], {}, None),
    ([unit("a", seq=1), unit("b", seq=0)], {}, ("b", "host-b")),
    ([unit("a", priority=1, seq=5), unit("b", seq=0)], {}, ("a", "host-b")),
    ([unit("a")], {"host-b": 2}, ("a", "host-c")),
    ([unit("a")], {"host-b": 2, "host-c": 2}, None),
    # A resumed move keeps its journaled destination, even when another peer has room.
    ([unit("a", destination="host-b")], {"host-b": 2}, None),
    ([unit("a", priority=9, destination="host-b"), unit("b", seq=1)], {"host-b": 2}, ("b", "host-c")),
    ([unit("a", priority=-1), unit("b", priority=-2)], {}, ("a", "host-b")),
])  # fmt: skip
def test_next_unit(waiting: list[Unit], incoming: dict[str, int], expected: tuple[str, str] | None) -> None:
    chosen = next_unit(waiting, incoming, PEERS, max_incoming_per_peer=2)
    assert (None if chosen is None else (chosen[0].key, chosen[1])) == expected
