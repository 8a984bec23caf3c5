"""Live-moves a running VM (libvirt live migration with storage copy), then removes the source's disks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from evacuator.hypervisor.model import Hypervisor, VmState, is_active
from evacuator.migrate.final_steps import clean_up_source, verify_destination
from evacuator.migrate.stepper import Stepper
from evacuator.migrate.steps import MoveAttempt, MoveReport, MoveStep, StepEvent, StepRefused, no_slot

log = structlog.get_logger(__name__)


class LiveMigrator:
    """The same idempotent steps and journal events as a cold move, fewer of them: the live migration is the
    copy (disks stream while the guest runs; libvirt switches over, defines it on the destination with the
    same UUID and MACs, and undefines the source), then verify, then clean up the disks libvirt leaves on the
    source. A live migration that fails leaves the guest running on the source: nothing to roll back. The
    caller holds the transfer slot around the whole move."""

    def __init__(
        self, *, source: Hypervisor, destination: Hypervisor, clock: Callable[[], datetime],
        on_step: Callable[[StepEvent], None],
    ) -> None:
        self._stepper = Stepper(source=source, destination=destination, clock=clock, on_step=on_step)
        self._src = source
        self._dst = destination
        self._clock = clock

    def move(self, vm_uuid: str, *, start_on_destination: bool | None = None) -> MoveReport:
        began = self._clock()
        move = self._stepper.begin(vm_uuid, start_on_destination)
        plan = (
            (MoveStep.COPY_DISKS, self._live),
            (MoveStep.VERIFY, lambda move: verify_destination(self._src, self._dst, move)),
            (MoveStep.CLEAN_UP, lambda move: clean_up_source(self._src, self._dst, move)),
        )
        return self._stepper.run(move, plan, transfer_slot=no_slot, began=began)

    def _live(self, move: MoveAttempt) -> bool:
        dst = self._dst.find_vm(move.uuid)
        src = self._src.find_vm(move.uuid)
        if src is None and dst is not None:
            return False  # switched over already (a retry after the migration finished)
        if not is_active(src):
            raise StepRefused(f"is not running on {self._src.name}: a live move needs a running guest")
        if dst is not None and dst.state is VmState.RUNNING:
            raise StepRefused(f"runs on both {self._src.name} and {self._dst.name}: resolve by hand")
        log.info("live_migration_started", vm_uuid=move.uuid, source=self._src.name,
                 destination=self._dst.name)
        self._src.migrate_live(move.uuid, self._dst)
        return True
