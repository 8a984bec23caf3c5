"""A window's pre-copy: once a move's window opens, its destination is chosen, claimed and journaled, and the
running VM's disks are copied there, pass after pass, while its tenant preprocesses. A consistency group's
VMs are pre-copied together, to the one destination the whole group will move to (window_copy.py).

The rules (docs/moves.md, "Pre-copy during the window"):
- A pass runs only under a transfer slot that was free at once, and gives it up at the next chunk when a move
  waits for one: a move whose window has ended is never delayed by a pre-copy.
- The first pass sends the volume whole; each later one reads it again and sends only the blocks whose
  digest changed (migrate/converge.py). None of it counts until the move's last pass, once the VM is off,
  and the destination's digest of its whole volume is checked as for any copy.
- The runner takes the pre-copy over when the move starts (`take`, a group's runner `take_group`): its held
  claim and what was sent.
- A cancelled move (or one ended otherwise) removes its pre-copied volumes and gives its claim back (a
  group's pre-copy, when any of its moves ends); a rolled-back one has them removed by the rollback, which
  cleans the journaled destination.
- After a crash nothing of a pass is trusted: the restarted pre-copy (or the move) copies afresh.
- While the cloud-wide pause holds (`evacuator pause`), no pass starts: a pass under way ends as a move under
  way does, and the claim is kept for when the pause is lifted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from evacuator.hypervisor.model import VolumeInfo
from evacuator.moves.attempts import Attempts
from evacuator.moves.state import PENDING, MoveRecord, Phase, boot_ordered
from evacuator.moves.window_copy import Handover, WindowCopy


class WindowCopies:
    """Every window's pre-copy of one engine, one thread each; thread-safe."""

    def __init__(self, attempts: Attempts, *, limit_for: Callable[[VolumeInfo], float],
                 paused: Callable[[], bool] = lambda: False) -> None:
        """`paused`: whether the cloud-wide pause holds (guard.Gate.paused)."""
        self._attempts = attempts
        self._limit_for = limit_for
        self._paused = paused
        self._lock = threading.Lock()
        self._copies: dict[str, WindowCopy] = {}
        # Held by the engine while it journals a move due, and by a pre-copy while it journals its
        # destination: a pre-copy never writes over a move's `due`.
        self.journal_lock = threading.Lock()

    def begin(self, record: MoveRecord) -> None:
        """Starts the move's pre-copy (its group's, for a member of one) unless it runs already, or the move
        is not in its window."""
        if not self._attempts.config.precopy_during_window or record.state not in PENDING \
                or record.phase is Phase.DUE:  # fmt: skip
            return
        members: tuple[str, ...] = (record.vm_uuid,)
        key = record.vm_uuid
        if record.group is not None:
            key = _group_key(record.group)
            found = [r for r in self._attempts.journal.unfinished() if r.group == record.group]
            members = tuple(r.vm_uuid for r in boot_ordered(found))
        with self._lock:
            if key in self._copies:
                return
            copy = self._copies[key] = WindowCopy(
                self._attempts, key=key, vm_uuids=members, group=record.group, limit_for=self._limit_for,
                paused=self._paused, journal_lock=self.journal_lock, ended=self._ended)
        copy.thread.start()

    def take(self, vm_uuid: str, destination: str | None) -> Handover | None:
        """Stops the VM's pre-copy (its pass ends at the next chunk) and hands over what it holds, if it
        holds the move's journaled `destination`; a pre-copy toward any other host gives its claim back."""
        return self._take(vm_uuid, destination)

    def take_group(self, group: str, destination: str | None) -> Handover | None:
        """The same for a consistency group's pre-copy: one claim, every member's volumes."""
        return self._take(_group_key(group), destination)

    def _take(self, key: str, destination: str | None) -> Handover | None:
        with self._lock:
            copy = self._copies.pop(key, None)
        handed = None if copy is None else copy.hand_over()
        if handed is not None and handed.held.host != destination:
            handed.held.release()
            return None
        return handed

    def stop(self) -> None:
        """Stops every pre-copy and gives its claim back; what it sent stays (a restart copies afresh)."""
        with self._lock:
            copies = list(self._copies.values())
            self._copies.clear()
        for copy in copies:
            copy.stopping.set()
        for copy in copies:
            copy.thread.join(timeout=30)

    def running(self) -> tuple[str, ...]:
        """The keys of the pre-copies under way: a VM's uuid, or `group:<name>`."""
        with self._lock:
            return tuple(self._copies)

    def _ended(self, copy: WindowCopy) -> None:
        with self._lock:
            if self._copies.get(copy.key) is copy:
                del self._copies[copy.key]


def _group_key(group: str) -> str:
    return f"group:{group}"
