"""RecordedOutcomes: the Outcomes fake, recording how each move ended, in order."""

from __future__ import annotations

from evacuator.moves.state import MoveRecord


class RecordedOutcomes:
    """The Outcomes fake: records every ending, in order (tests read `moves` and `failures`)."""

    def __init__(self) -> None:
        self.moves: list[MoveRecord] = []
        self.failures: list[tuple[MoveRecord, str]] = []

    def moved(self, record: MoveRecord) -> None:
        self.moves.append(record)

    def failed(self, record: MoveRecord, reason: str) -> None:
        self.failures.append((record, reason))
