"""The durable outbox store: notices are kept (SQLite, WAL) from before publishing until the broker confirms.

notifiers.delivery.OutboxPublisher sends them in order. A notice survives a broker outage and a restart of
the service; it may reach a tenant twice (a confirm lost with the connection) and carries its event_id so the
tenant can drop the duplicate.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from notifiers.errors import OutboxError
from notifiers.messages import Notice, encode, notice_route

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    host TEXT NOT NULL,
    notice_type TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body BLOB NOT NULL
)
"""



def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    """One stored notice: `seq` orders delivery and is the notice's incarnation."""

    seq: int
    tenant: str
    host: str
    notice_type: str
    event_id: str
    body: bytes


class Outbox:
    """The SQLite store; safe to use from several threads (one connection behind a lock)."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a notice the service was told is stored must survive a power cut, not only a crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            # Sequence numbers (incarnations) start at the creation time in milliseconds, so an outbox created
            # again (a wiped state_dir) still numbers above everything its predecessor sent.
            seeded = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            if seeded is None:
                start = int(clock().timestamp() * 1000)
                self._db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (start,))
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"{path}: cannot open the notice outbox: {exc}") from exc

    def put(self, notice: Notice) -> OutboxEntry:
        """Store the notice, its incarnation set to its sequence number; it is on disk when this returns."""
        tenant, host = notice_route(notice)
        with self._lock, self._mapped("store a notice"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT INTO outbox (tenant, host, notice_type, event_id, body) VALUES (?, ?, ?, ?, ?)",
                    (tenant, host, notice.type, notice.event_id, b""),
                )
                seq = int(cursor.lastrowid or 0)
                body = encode(notice.model_copy(update={"incarnation": seq}))
                self._db.execute("UPDATE outbox SET body = ? WHERE seq = ?", (body, seq))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return OutboxEntry(
            seq=seq, tenant=tenant, host=host, notice_type=notice.type, event_id=notice.event_id, body=body
        )

    def oldest(self, limit: int) -> list[OutboxEntry]:
        with self._lock, self._mapped("read notices"):
            rows = self._db.execute(
                "SELECT seq, tenant, host, notice_type, event_id, body FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            OutboxEntry(seq=r[0], tenant=r[1], host=r[2], notice_type=r[3], event_id=r[4], body=bytes(r[5]))
            for r in rows
        ]

    def delete(self, seq: int) -> None:
        with self._lock, self._mapped("delete a delivered notice"):
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def count(self) -> int:
        with self._lock, self._mapped("count notices"):
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _mapped(self, operation: str) -> _SqliteErrors:
        return _SqliteErrors(f"{self._path}: cannot {operation}")


class _SqliteErrors:
    """Maps sqlite3 errors to OutboxError naming the file and the operation."""

    def __init__(self, message: str) -> None:
        self._message = message

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.Error):
            raise OutboxError(f"{self._message}: {exc}") from exc


class Sender(Protocol):
    """What the delivery thread needs from a NoticePublisher."""

    def start(self, *, timeout_seconds: float = ...) -> None: ...
    def close(self, *, timeout_seconds: float = ...) -> None: ...
    def ensure_tenant_queue(self, tenant: str) -> Future[None]: ...
    def publish_body(
        self, *, tenant: str, host: str, notice_type: str, event_id: str, body: bytes
    ) -> Future[datetime]: ...
