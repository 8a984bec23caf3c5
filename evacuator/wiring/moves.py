"""Wiring of the move engine: its journal, the hosts it opens, its caps, and the crash tests' kill switch."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from datetime import datetime

import structlog

from evacuator.hypervisor.model import Hypervisor
from evacuator.moves.engine import MoveEngine
from evacuator.moves.journal import Journal
from evacuator.moves.runner import CrashPoint, EngineConfig, no_crash
from evacuator.moves.state import Phase
from evacuator.settings import Settings
from evacuator.wiring.peers import cluster_slots_for, open_host_for

log = structlog.get_logger(__name__)

CRASH_AT_ENV = "EVACUATOR_CRASH_AT"


def crash_point_from_env(environ: Mapping[str, str]) -> CrashPoint:
    """Test-only: `EVACUATOR_CRASH_AT=<step>:<phase>` kills the process with SIGKILL right after the journal
    records that step and phase (the crash tests restart it and check nothing was lost)."""
    wanted = environ.get(CRASH_AT_ENV)
    if not wanted:
        return no_crash
    log.warning("crash_point_armed", crash_at=wanted)

    def crash(step: str, phase: Phase) -> None:
        if f"{step}:{phase}" == wanted:
            os.kill(os.getpid(), signal.SIGKILL)

    return crash


def engine_config(settings: Settings) -> EngineConfig:
    evacuation = settings.evacuation
    return EngineConfig(
        host=settings.host.name,
        peers=tuple(p.name for p in settings.peers),
        shutdown_timeout_seconds=evacuation.shutdown_timeout_seconds,
        move_attempts=evacuation.move_attempts,
        retry_initial_seconds=evacuation.retry_initial_seconds,
        retry_max_seconds=evacuation.retry_max_seconds,
        copy_timeout_base_seconds=evacuation.copy_timeout_base_seconds,
        copy_min_bytes_per_second=evacuation.copy_min_bytes_per_second,
        max_outgoing_moves=evacuation.max_outgoing_moves,
        max_incoming_moves_per_peer=evacuation.max_incoming_moves_per_peer,
        quiesce_ahead_moves=evacuation.quiesce_ahead_moves,
        precopy_during_shutdown=evacuation.precopy_during_shutdown,
    )


def build_engine(settings: Settings, hypervisor: Hypervisor, *, clock: Callable[[], datetime]) -> MoveEngine:
    return MoveEngine(
        config=engine_config(settings),
        journal=Journal(settings.state_dir / "journal.sqlite"),
        hypervisor=hypervisor,
        open_host=open_host_for(settings),
        clock=clock,
        sleep=time.sleep,
        crash_point=crash_point_from_env(os.environ),
        cluster_slots=cluster_slots_for(settings),
    )
