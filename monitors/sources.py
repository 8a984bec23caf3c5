"""The Source seam: the Protocol every sensor reader implements, the registry, and one poll of all."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from monitors.edac import EdacReader
from monitors.errors import MonitorError, NoWorkingSourceError
from monitors.hwmon import HwmonReader
from monitors.rasdaemon import RasdaemonReader
from monitors.readings import (
    HostSnapshot,
    SensorFault,
    SourceResult,
    SourceState,
    SourceStatus,
)
from monitors.settings import MonitorsSettings
from monitors.sysfs import FileReader, read_bounded

log = structlog.get_logger(__name__)


class Source(Protocol):
    """A sensor reader: polled once per interval, it never raises for a missing or broken device."""

    @property
    def name(self) -> str: ...

    def poll(self) -> SourceResult: ...


def _state(has_data: bool, faults: tuple[SensorFault, ...]) -> SourceState:
    if has_data:
        return SourceState.OK
    return SourceState.FAILED if faults else SourceState.ABSENT


class HwmonSource:
    """hwmon temperatures under a sysfs root."""

    name = "hwmon"

    def __init__(self, sysfs_root: Path, reader: FileReader = read_bounded) -> None:
        self._reader = HwmonReader(sysfs_root, reader=reader)

    def poll(self) -> SourceResult:
        snapshot = self._reader.read()
        state = _state(bool(snapshot.temperatures), snapshot.faults)
        return SourceResult(
            status=SourceStatus(source=self.name, state=state),
            temperatures=snapshot.temperatures,
            faults=snapshot.faults,
        )


class EdacSource:
    """EDAC memory-controller counters under a sysfs root."""

    name = "edac"

    def __init__(self, sysfs_root: Path, reader: FileReader = read_bounded) -> None:
        self._reader = EdacReader(sysfs_root, reader=reader)

    def poll(self) -> SourceResult:
        snapshot = self._reader.read()
        state = _state(bool(snapshot.memory_controllers), snapshot.faults)
        return SourceResult(
            status=SourceStatus(source=self.name, state=state),
            memory_controllers=snapshot.memory_controllers,
            faults=snapshot.faults,
        )


class RasdaemonSource:
    """New rows of rasdaemon's mc_event table."""

    name = "rasdaemon"

    def __init__(self, reader: RasdaemonReader) -> None:
        self._reader = reader

    def poll(self) -> SourceResult:
        batch = self._reader.poll()
        return SourceResult(status=batch.status, memory_events=batch.events, faults=batch.faults)


SourceFactory = Callable[[MonitorsSettings], Source]


def _ipmi(settings: MonitorsSettings) -> Source:
    from monitors.ipmi import build_ipmi_source  # pyghmi is imported only where IPMI is configured

    return build_ipmi_source(settings.sources.ipmi)


SOURCE_FACTORIES: dict[str, SourceFactory] = {
    "hwmon": lambda s: HwmonSource(s.sysfs_root),
    "edac": lambda s: EdacSource(s.sysfs_root),
    "rasdaemon": lambda s: RasdaemonSource(RasdaemonReader(s.sources.rasdaemon.db_path)),
    "ipmi": _ipmi,
}
"""Adding a source: a reader module, one line here, a settings model, a fixture tree, tests."""


def build_sources(settings: MonitorsSettings) -> list[Source]:
    """The enabled sources, in registry order."""
    enabled = settings.sources.enabled_names()
    return [factory(settings) for name, factory in SOURCE_FACTORIES.items() if name in enabled]


class SourcePoller:
    """Polls every source once per call and merges the results; logs only when a source changes state."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self._sources = tuple(sources)
        self._states: dict[str, SourceState] = {}

    def poll(self) -> HostSnapshot:
        results = [self._poll_one(source) for source in self._sources]
        return HostSnapshot(
            temperatures=tuple(t for r in results for t in r.temperatures),
            memory_controllers=tuple(m for r in results for m in r.memory_controllers),
            memory_events=tuple(e for r in results for e in r.memory_events),
            faults=tuple(f for r in results for f in r.faults),
            sources=tuple(r.status for r in results),
        )

    def _poll_one(self, source: Source) -> SourceResult:
        try:
            result = source.poll()
        except (MonitorError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            result = SourceResult(
                status=SourceStatus(source=source.name, state=SourceState.FAILED, detail=reason),
                faults=(SensorFault(path=source.name, reason=reason),),
            )
        previous = self._states.get(source.name)
        state = result.status.state
        if state is not previous:
            level = log.debug if state is SourceState.ABSENT else log.info
            if state is SourceState.FAILED:
                level = log.warning
            level("source_state_changed", source=source.name, state=state, detail=result.status.detail)
        self._states[source.name] = state
        return result


def require_working_source(snapshot: HostSnapshot) -> None:
    """Raise when no configured source produced data: the service must refuse to start blind."""
    if any(s.state is SourceState.OK for s in snapshot.sources):
        return
    detail = ", ".join(
        f"{s.source}={s.state}" + (f" ({s.detail})" if s.detail else "") for s in snapshot.sources
    )
    raise NoWorkingSourceError(f"no sensor source works on this host: {detail or 'none configured'}")
