"""The admin's requests to this host's daemon (`evacuator drain`, `evacuator undrain`) and whether the host
is in maintenance, durable in SQLite beside the journal (`<state_dir>/admin.sqlite`).

Why a file and not a socket or the broker: the commands run as root on the host itself, like the daemon, and
a request written here is taken by the daemon at its next poll, or after a restart if it was down: nothing is
lost, nothing needs a listener or a credential of its own. Each request is taken once (`taken_at`) and says
what came of it (`outcome`), which `drain --wait` reads back.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from evacuator.errors import JournalError

Action = Literal["drain", "undrain", "approve", "reject"]
MAINTENANCE_SOURCE = "maintenance"  # the source of a drained incident's one reason (no sensor found it)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, reason TEXT NOT NULL,
    window_seconds INTEGER, requested_at TEXT NOT NULL, taken_at TEXT, outcome TEXT, incident_id TEXT
);
CREATE TABLE IF NOT EXISTS maintenance (
    one INTEGER PRIMARY KEY CHECK (one = 1), reason TEXT NOT NULL, since TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminRequest:
    request_id: int
    action: Action
    reason: str
    window_seconds: int | None
    requested_at: datetime
    taken_at: datetime | None
    outcome: str | None  # "accepted" or "refused: <why>" once taken
    incident_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Maintenance:
    reason: str
    since: datetime


class AdminStore:
    """Thread-safe; each change one committed transaction."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the admin requests: {exc}") from exc
        self._path = path

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AdminStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def request(self, action: Action, *, reason: str, window_seconds: int | None, now: datetime) -> int:
        """A new request for the daemon; its id."""
        cursor = self._run("INSERT INTO requests (action, reason, window_seconds, requested_at) "
                           "VALUES (?, ?, ?, ?)", (action, reason[:500], window_seconds, now.isoformat()))
        return int(cursor.lastrowid or 0)

    def untaken(self) -> list[AdminRequest]:
        """The requests the daemon has not taken yet, oldest first."""
        return self._select("WHERE taken_at IS NULL ORDER BY request_id")

    def get(self, request_id: int) -> AdminRequest | None:
        found = self._select("WHERE request_id = ?", (request_id,))
        return found[0] if found else None

    def settle(self, request: AdminRequest, *, outcome: str, now: datetime,
               incident_id: str | None = None) -> None:  # fmt: skip
        self._run("UPDATE requests SET taken_at = ?, outcome = ?, incident_id = ? WHERE request_id = ?",
                  (now.isoformat(), outcome[:1000], incident_id, request.request_id))

    def maintenance(self) -> Maintenance | None:
        rows = self._query("SELECT reason, since FROM maintenance WHERE one = 1", ())
        return None if not rows else Maintenance(reason=rows[0][0], since=datetime.fromisoformat(rows[0][1]))

    def set_maintenance(self, reason: str | None, now: datetime) -> None:
        """In maintenance for `reason` from `now` (kept if already so); None: back in service."""
        if reason is None:
            self._run("DELETE FROM maintenance", ())
        else:
            self._run("INSERT OR IGNORE INTO maintenance (one, reason, since) VALUES (1, ?, ?)",
                      (reason[:500], now.isoformat()))

    def _select(self, where: str, args: tuple[object, ...] = ()) -> list[AdminRequest]:
        rows = self._query("SELECT request_id, action, reason, window_seconds, requested_at, taken_at, "
                           f"outcome, incident_id FROM requests {where}", args)
        return [AdminRequest(request_id=r[0], action=r[1], reason=r[2], window_seconds=r[3],
                             requested_at=datetime.fromisoformat(r[4]),
                             taken_at=None if r[5] is None else datetime.fromisoformat(r[5]), outcome=r[6],
                             incident_id=r[7]) for r in rows]  # fmt: skip

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise JournalError(f"{self._path}: {exc}") from exc

    def _run(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, args)
            except sqlite3.Error as exc:
                raise JournalError(f"{self._path}: {exc}") from exc
