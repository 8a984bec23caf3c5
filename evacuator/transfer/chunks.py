"""A volume's content as it travels: data chunks in order, and holes that only say how long they are."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class DataChunk:
    """Bytes of a volume, in order."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class HoleChunk:
    """A run of unallocated (all-zero) bytes of a volume: only its length travels."""

    length_bytes: int


Chunk = DataChunk | HoleChunk


def close_chunks(chunks: Iterable[Chunk]) -> None:
    """Ends a volume read early and at once: an open download keeps the volume busy (undeletable)."""
    close = getattr(chunks, "close", None)
    if callable(close):
        close()
