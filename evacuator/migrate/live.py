"""Live-moves a running VM (libvirt live migration with storage copy), then removes the source's disks."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from evacuator.hypervisor.model import VmState, is_active
from evacuator.migrate.cold import ColdMigrator, _Move, _Refused
from evacuator.migrate.steps import MoveStep

log = structlog.get_logger(__name__)


class LiveMigrator(ColdMigrator):
    """The same idempotent steps and journal events as a cold move, fewer of them: the live migration is the
    copy (disks stream while the guest runs; libvirt switches over, defines it on the destination with the
    same UUID and MACs, and undefines the source), then verify, then clean up the disks libvirt leaves on the
    source. A live migration that fails leaves the guest running on the source: nothing to roll back."""

    def _plan(self) -> tuple[tuple[MoveStep, Callable[[_Move], bool]], ...]:
        return (
            (MoveStep.COPY_DISKS, self._live),
            (MoveStep.VERIFY, self._verify),
            (MoveStep.CLEAN_UP, self._clean_up),
        )

    def _live(self, move: _Move) -> bool:
        dst = self._dst.find_vm(move.uuid)
        src = self._src.find_vm(move.uuid)
        if src is None and dst is not None:
            return False  # switched over already (a retry after the migration finished)
        if not is_active(src):
            raise _Refused(f"is not running on {self._src.name}: a live move needs a running guest")
        if dst is not None and dst.state is VmState.RUNNING:
            raise _Refused(f"runs on both {self._src.name} and {self._dst.name}: resolve by hand")
        log.info("live_migration_started", vm_uuid=move.uuid, source=self._src.name,
                 destination=self._dst.name)
        self._src.migrate_live(move.uuid, self._dst)
        return True

