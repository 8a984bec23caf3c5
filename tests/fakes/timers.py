"""ManualTimers: the in-memory Timers fake, whose time moves only when a test says so."""

from __future__ import annotations

import threading
from datetime import datetime

from evacuator.incident.timers import OnFire


class ManualTimers:
    """The in-memory fake: time moves only when a test calls advance(now)."""

    def __init__(self) -> None:
        self._due: dict[str, datetime] = {}
        self._on_fire: OnFire | None = None
        self._lock = threading.Lock()
        self.fired: list[str] = []

    def start(self, on_fire: OnFire) -> None:
        self._on_fire = on_fire

    def schedule(self, key: str, at: datetime) -> None:
        with self._lock:
            self._due[key] = at

    def fire_now(self, key: str) -> bool:
        with self._lock:
            if self._due.pop(key, None) is None:
                return False
        self._fire(key)
        return True

    def cancel(self, key: str) -> bool:
        with self._lock:
            return self._due.pop(key, None) is not None

    def pending(self) -> dict[str, datetime]:
        with self._lock:
            return dict(self._due)

    def advance(self, now: datetime) -> None:
        with self._lock:
            due = sorted((at, key) for key, at in self._due.items() if at <= now)
            for _, key in due:
                del self._due[key]
        for _, key in due:
            self._fire(key)

    def shutdown(self) -> None:
        self._on_fire = None

    def _fire(self, key: str) -> None:
        self.fired.append(key)
        if self._on_fire is not None:
            self._on_fire(key)
