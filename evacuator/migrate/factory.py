"""Builds the migrators of one engine, each kind in one place, with the engine's timings, clock and sleep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from evacuator.hypervisor.model import Hypervisor
from evacuator.migrate.cold import ColdMigrator
from evacuator.migrate.group import GroupQuiesce
from evacuator.migrate.live import LiveMigrator
from evacuator.migrate.steps import StepEvent, TransferSlot, TryTransferSlot, no_slot


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationTimings:
    """How long a guest gets to shut down, how often it is looked at, and how long a copy may take."""

    shutdown_timeout_seconds: float
    poll_interval_seconds: float = 0.5
    copy_timeout_base_seconds: float = 60.0
    copy_min_bytes_per_second: float = 10 * 1024 * 1024


class Migrators:
    """One per engine; each call builds a migrator for one attempt between two open hosts."""

    def __init__(
        self, timings: MigrationTimings, *, clock: Callable[[], datetime], sleep: Callable[[float], None]
    ) -> None:
        self._timings = timings
        self._clock = clock
        self._sleep = sleep

    def cold(
        self, source: Hypervisor, destination: Hypervisor, *, on_step: Callable[[StepEvent], None],
        transfer_slot: TransferSlot = no_slot, precopy_slot: TryTransferSlot | None = None,
    ) -> ColdMigrator:
        timings = self._timings
        return ColdMigrator(
            source=source, destination=destination, clock=self._clock, sleep=self._sleep, on_step=on_step,
            shutdown_timeout_seconds=timings.shutdown_timeout_seconds,
            poll_interval_seconds=timings.poll_interval_seconds,
            copy_timeout_base_seconds=timings.copy_timeout_base_seconds,
            copy_min_bytes_per_second=timings.copy_min_bytes_per_second,
            transfer_slot=transfer_slot, precopy_slot=precopy_slot,
        )

    def live(
        self, source: Hypervisor, destination: Hypervisor, *, on_step: Callable[[StepEvent], None]
    ) -> LiveMigrator:
        return LiveMigrator(source=source, destination=destination, clock=self._clock, on_step=on_step)

    def group_quiesce(
        self, source: Hypervisor, destination: Hypervisor, *, on_step: Callable[[StepEvent], None]
    ) -> GroupQuiesce:
        return GroupQuiesce(
            source=source, destination=destination, clock=self._clock, sleep=self._sleep, on_step=on_step,
            shutdown_timeout_seconds=self._timings.shutdown_timeout_seconds,
            poll_interval_seconds=self._timings.poll_interval_seconds,
        )
