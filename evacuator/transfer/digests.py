"""Digests of the bytes volume chunks stand for: plain sha256, and the block digest copies are checked by."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import xxhash

from evacuator.transfer.chunks import Chunk, DataChunk, close_chunks

_ZEROS = bytes(1 << 20)


class _Tapped:
    """A running digest of chunks that can also hash them as they pass."""

    def update(self, chunk: Chunk) -> None:
        raise NotImplementedError

    def tap(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """Passes the chunks through, hashing them on the way (closing it closes them)."""
        try:
            for chunk in chunks:
                self.update(chunk)
                yield chunk
        finally:
            close_chunks(chunks)


class ChunkSha256(_Tapped):
    """A running sha256 of the bytes chunks stand for, holes counted as zeros."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, chunk: Chunk) -> None:
        if isinstance(chunk, DataChunk):
            self._digest.update(chunk.data)
            return
        remaining = chunk.length_bytes
        while remaining > 0:
            piece = min(remaining, len(_ZEROS))
            self._digest.update(memoryview(_ZEROS)[:piece])
            remaining -= piece

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


BLOCK_BYTES = 1 << 20


def block_digest(block: bytes | bytearray | memoryview) -> bytes:
    """One block's digest: XXH3-128 of its bytes (a short last block: of what it holds)."""
    # XXH3-128 hashes at memory speed (sha256 took a third of a core per copy): it guards against
    # corruption on the way, not against a forger, and the destination host is trusted like the source.
    return xxhash.xxh3_128_digest(block)


_ZERO_BLOCK_DIGEST = block_digest(_ZEROS)


def digest_of_blocks(digests: Iterable[bytes]) -> str:
    """The BlockDigest of a volume from its blocks' digests, in order."""
    outer = hashlib.sha256()
    for digest in digests:
        outer.update(digest)
    return outer.hexdigest()


class BlockDigest(_Tapped):
    """A digest of the bytes chunks stand for that costs nothing for holes: sha256 over the XXH3-128 of
    each 1 MiB block, an all-zero block's being a constant. It depends only on the content (a hole and
    written zeros digest alike), so a copy verifies against what was sent without hashing gigabytes of
    zeros. `keep_blocks`: also keep each block's digest, in order (`blocks`), so that a later pass can tell
    which blocks changed (evacuator/migrate/precopy.py)."""

    def __init__(self, *, keep_blocks: bool = False) -> None:
        self._outer = hashlib.sha256()
        self._block = bytearray()
        self._pending_zero_bytes = 0  # zeros of the current block not yet materialised
        self.blocks: list[bytes] | None = [] if keep_blocks else None

    def _emit(self, digest: bytes) -> None:
        self._outer.update(digest)
        if self.blocks is not None:
            self.blocks.append(digest)

    def update(self, chunk: Chunk) -> None:
        if isinstance(chunk, DataChunk):
            self.update_data(memoryview(chunk.data))
            return
        remaining = chunk.length_bytes
        while remaining > 0:
            filled = len(self._block) + self._pending_zero_bytes
            take = min(remaining, BLOCK_BYTES - filled)
            if not self._block and self._pending_zero_bytes == 0 and take == BLOCK_BYTES:
                self._emit(_ZERO_BLOCK_DIGEST)
            else:
                self._pending_zero_bytes += take
                self._flush_if_full()
            remaining -= take

    def update_data(self, view: memoryview) -> None:
        """The next bytes, from a buffer the caller may reuse once this returns."""
        if len(view) == BLOCK_BYTES and not self._block and not self._pending_zero_bytes:
            self._emit(block_digest(view))  # a whole aligned block: no copy into the buffer
            return
        while view:
            if self._pending_zero_bytes:
                self._block += bytes(self._pending_zero_bytes)
                self._pending_zero_bytes = 0
            take = min(len(view), BLOCK_BYTES - len(self._block))
            self._block += view[:take]
            view = view[take:]
            self._flush_if_full()

    def _flush_if_full(self) -> None:
        if len(self._block) + self._pending_zero_bytes == BLOCK_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._block:
            self._block += bytes(self._pending_zero_bytes)
            self._emit(block_digest(self._block))
        elif self._pending_zero_bytes == BLOCK_BYTES:
            self._emit(_ZERO_BLOCK_DIGEST)
        elif self._pending_zero_bytes:
            self._emit(block_digest(bytes(self._pending_zero_bytes)))
        self._block = bytearray()
        self._pending_zero_bytes = 0

    def hexdigest(self) -> str:
        self._flush()
        return self._outer.hexdigest()


BLOCK_DIGEST_ALGORITHM = "sha256-of-xxh3-128-per-1mib"
"""BlockDigest's name on the wire: a peer that digests differently must say so, not answer a mismatch."""


def block_digest_of_chunks(chunks: Iterable[Chunk]) -> str:
    digest = BlockDigest()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def sha256_of_chunks(chunks: Iterable[Chunk]) -> str:
    """The sha256 of the bytes the chunks stand for, holes counted as zeros."""
    digest = ChunkSha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()
