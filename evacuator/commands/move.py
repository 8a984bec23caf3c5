"""`evacuator move`: moves VMs now through the daemon's journaled engine, and finishes what it left."""

from __future__ import annotations

import structlog

from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.logs import configure_logging
from evacuator.moves.state import MoveState
from evacuator.settings import Settings
from evacuator.wiring.moves import build_engine
from evacuator.wiring.runtime import utc_now

log = structlog.get_logger(__name__)

_WAIT_SECONDS = 24 * 3600.0


def run_moves(settings: Settings, vm_uuids: list[str]) -> int:
    """Resumes every unfinished move in the journal, then moves each named VM at once (no window).

    Run it while the daemon is stopped: both would drive the same journal. Exit status 0 when every named VM
    (and every resumed one) ended `done`."""
    configure_logging(settings.logging.format, level=settings.logging.level)
    host = settings.host
    with open_libvirt_host(host.name, host.libvirt_uri, host.storage_pool) as hypervisor:
        engine = build_engine(settings, hypervisor, clock=utc_now)
        # No timers here: every journaled move that has not ended is due.
        resumed = engine.start(timer_pending=lambda vm_uuid: False)
        wanted = [uuid.lower() for uuid in vm_uuids]
        for vm_uuid in wanted:
            engine.submit(vm_uuid)
        engine.wait_idle(_WAIT_SECONDS)
        engine.stop()
        ended = {uuid: engine.record(uuid) for uuid in [*resumed, *wanted]}
    failed = sorted(uuid for uuid, rec in ended.items() if rec is None or rec.state is not MoveState.DONE)
    log.info("moves_ended", done=len(ended) - len(failed), not_done=failed)
    return 1 if failed else 0
