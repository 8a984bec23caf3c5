"""`evacuator move`: moves VMs now through the daemon's journaled engine, and finishes what it left."""

from __future__ import annotations

import argparse
from pathlib import Path

import structlog

from evacuator.logs import configure_logging
from evacuator.moves.state import MoveState
from evacuator.settings import Settings, load_settings
from evacuator.wiring.moves import build_engine
from evacuator.wiring.runtime import open_own_host, utc_now

log = structlog.get_logger(__name__)

_WAIT_SECONDS = 24 * 3600.0


def run_moves(settings: Settings, vm_uuids: list[str]) -> int:
    """Resumes every unfinished move in the journal, then moves each named VM at once (no window).

    Run it while the daemon is stopped: both would drive the same journal. Exit status 0 when every named VM
    (and every resumed one) ended `done`."""
    configure_logging(settings.logging.format, level=settings.logging.level)
    with open_own_host(settings) as hypervisor:
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


def main(args: argparse.Namespace) -> int:
    return run_moves(load_settings(Path(args.config)), list(args.vm_uuid))
