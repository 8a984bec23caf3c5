"""The Timers seam: one persistent timer per VM in its window; the service schedules, fires and cancels."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

OnFire = Callable[[str], None]


class Timers(Protocol):
    """One timer per key (a VM's UUID); firing hands the key to the callback given to start()."""

    def start(self, on_fire: OnFire) -> None: ...
    def schedule(self, key: str, at: datetime) -> None: ...
    def fire_now(self, key: str) -> bool: ...
    def cancel(self, key: str) -> bool: ...
    def pending(self) -> dict[str, datetime]: ...
    def shutdown(self) -> None: ...
