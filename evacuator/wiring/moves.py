"""Wiring of the move engine: its journal, the hosts it opens, its caps, and the crash tests' kill switch."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

import structlog

from evacuator.hypervisor.model import Hypervisor
from evacuator.migrate.factory import MigrationTimings, Migrators
from evacuator.migrate.steps import copy_timeout_seconds
from evacuator.moves.attempts import Attempts, CrashPoint, EngineConfig, OpenHost, no_crash
from evacuator.moves.cloud_destinations import CloudConfig, CloudDestinations, HostStates
from evacuator.moves.destinations import Destinations
from evacuator.moves.engine import MoveEngine
from evacuator.moves.groups import GroupRunner
from evacuator.moves.guard import Gate, OpenGate
from evacuator.moves.journal import Journal
from evacuator.moves.runner import MoveRunner
from evacuator.moves.state import Phase
from evacuator.moves.transfer_slots import ClusterSlots, NoClusterCap, TransferSlots
from evacuator.moves.window_copies import WindowCopies
from evacuator.settings import Settings
from evacuator.wiring.peers import claims_client_for, cluster_slots_for, open_host_for, placement_policy

log = structlog.get_logger(__name__)

CRASH_AT_ENV = "EVACUATOR_CRASH_AT"


class CloudView(HostStates, Protocol):
    """The host view as the daemon's movers use it (peers/host_view.py HostView): every host's state, and
    how to reach a host that publishes its libvirt URI."""

    def reach_of(self, host: str) -> tuple[str, str] | None: ...


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


def engine_config(settings: Settings, *, queue_picks_destination: bool = True) -> EngineConfig:
    evacuation = settings.evacuation
    return EngineConfig(
        host=settings.host.name,
        peers=tuple(p.name for p in settings.peers),
        move_attempts=evacuation.move_attempts,
        retry_initial_seconds=evacuation.retry_initial_seconds,
        retry_max_seconds=evacuation.retry_max_seconds,
        max_outgoing_moves=evacuation.max_outgoing_moves,
        max_incoming_moves_per_peer=evacuation.max_incoming_moves_per_peer,
        quiesce_ahead_moves=evacuation.quiesce_ahead_moves,
        precopy_during_shutdown=evacuation.precopy_during_shutdown,
        precopy_during_window=evacuation.precopy_during_window,
        precopy_pass_interval_seconds=evacuation.precopy_pass_interval_seconds,
        queue_picks_destination=queue_picks_destination,
    )


def migration_timings(settings: Settings) -> MigrationTimings:
    evacuation = settings.evacuation
    return MigrationTimings(
        shutdown_timeout_seconds=evacuation.shutdown_timeout_seconds,
        copy_timeout_base_seconds=evacuation.copy_timeout_base_seconds,
        copy_min_bytes_per_second=evacuation.copy_min_bytes_per_second,
    )


def assemble_engine(
    config: EngineConfig, timings: MigrationTimings, *, journal: Journal, hypervisor: Hypervisor,
    open_host: OpenHost, clock: Callable[[], datetime], sleep: Callable[[float], None],
    crash_point: CrashPoint = no_crash, cluster_slots: ClusterSlots | None = None,
    destinations: Destinations | None = None, gate: Gate | None = None,
) -> MoveEngine:
    """The engine and what its workers share: one set of transfer slots, one way to build migrators, and
    the runners of single moves and consistency groups. The daemon, the `move` command and the tests build
    it here alike, each with its own hosts and clock."""
    attempts = Attempts(
        config=config, journal=journal, open_host=open_host, clock=clock, sleep=sleep,
        crash_point=crash_point, migrators=Migrators(timings, clock=clock, sleep=sleep),
        slots=TransferSlots(max_outgoing=config.max_outgoing_moves,
                            max_incoming_per_peer=config.max_incoming_moves_per_peer),
        cluster_slots=cluster_slots or NoClusterCap(), destinations=destinations,
    )
    gate = gate or OpenGate()
    window = WindowCopies(attempts, paused=gate.paused, limit_for=lambda volume: copy_timeout_seconds(
        volume.allocation_bytes, timings.copy_timeout_base_seconds, timings.copy_min_bytes_per_second))
    return MoveEngine(config=config, journal=journal, hypervisor=hypervisor,
                      runner=MoveRunner(attempts, window=window), groups=GroupRunner(attempts, window=window),
                      clock=clock, crash_point=crash_point, gate=gate, window=window)  # fmt: skip


def journal_for(settings: Settings) -> Journal:
    """This host's move journal (the daemon's, and the `move` and `cancel` commands' while it is stopped)."""
    return Journal(settings.state_dir / "journal.sqlite")


def reachable_for(settings: Settings, view: CloudView) -> Callable[[str], bool]:
    """Whether this host's engine can open a host's libvirt: a configured peer, or with placement.scope
    cloud any host that publishes its libvirt URI on the host view."""
    peers = frozenset(p.name for p in settings.peers)

    def reachable(name: str) -> bool:
        return name in peers or (settings.placement.scope == "cloud" and view.reach_of(name) is not None)

    return reachable


def cloud_destinations(settings: Settings, view: CloudView, open_host: OpenHost, *,
                       clock: Callable[[], datetime]) -> CloudDestinations:  # fmt: skip
    """Destinations chosen over `view` and held by claims. With placement.scope peers only a configured peer
    is reachable; with scope cloud, any host that publishes its libvirt URI too (its broker user is then
    host.<name>, peer_trust)."""
    config = CloudConfig(source=settings.host.name, policy=placement_policy(settings),
                         claim_ttl_seconds=settings.placement.claim_ttl_seconds,
                         reachable=reachable_for(settings, view))  # fmt: skip
    return CloudDestinations(config=config, view=view, claims=claims_client_for(settings),
                             open_host=open_host, clock=clock)  # fmt: skip


def build_engine(settings: Settings, hypervisor: Hypervisor, *, clock: Callable[[], datetime],
                 view: CloudView | None = None, gate: Gate | None = None) -> MoveEngine:  # fmt: skip
    """The daemon's engine; with `view` (and placement.use_host_view) each move goes where placement over
    the host view says, under a claim; without, to the peers in order (the `move` command's way)."""
    open_host = open_host_for(settings) if view is None else open_host_for(settings, reach=view.reach_of)
    destinations = None
    if view is not None and settings.placement.use_host_view:
        destinations = cloud_destinations(settings, view, open_host, clock=clock)
    return assemble_engine(
        engine_config(settings, queue_picks_destination=destinations is None), migration_timings(settings),
        journal=journal_for(settings),
        hypervisor=hypervisor,
        open_host=open_host,
        clock=clock,
        sleep=time.sleep,
        crash_point=crash_point_from_env(os.environ),
        cluster_slots=cluster_slots_for(settings),
        destinations=destinations,
        gate=gate,
    )
