"""The Source seam: registry, merged polls, a failing source contained, refusing a blind start."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from monitors.errors import NoWorkingSourceError, SourceError
from monitors.readings import SourceResult, SourceState, SourceStatus
from monitors.settings import MonitorsSettings
from monitors.sources import SOURCE_FACTORIES, SourcePoller, build_sources, require_working_source

SYSFS = Path(__file__).resolve().parents[2] / "data" / "sysfs"


class FakeSource:
    """A source that answers OK with nothing, or raises what was injected."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self._error: Exception | None = None

    def inject_error(self, error: Exception | None) -> None:
        self._error = error

    def poll(self) -> SourceResult:
        self.calls += 1
        if self._error is not None:
            raise self._error
        return SourceResult(status=SourceStatus(source=self.name, state=SourceState.OK))


def test_registry_builds_the_enabled_sources_in_order(tmp_path: Path) -> None:
    settings = MonitorsSettings.model_validate(
        {"sysfs_root": str(SYSFS / "intel-2s"), "sources": {"rasdaemon": {"db_path": str(tmp_path / "x.db")}}}
    )
    assert [s.name for s in build_sources(settings)] == ["hwmon", "edac", "rasdaemon"]
    assert list(SOURCE_FACTORIES) == ["hwmon", "edac", "rasdaemon", "ipmi"]


def test_poller_merges_sources_over_a_real_tree(tmp_path: Path) -> None:
    settings = MonitorsSettings.model_validate(
        {"sysfs_root": str(SYSFS / "amd-epyc"), "sources": {"rasdaemon": {"db_path": str(tmp_path / "x.db")}}}
    )
    snapshot = SourcePoller(build_sources(settings)).poll()
    assert len(snapshot.temperatures) == 6 and len(snapshot.memory_controllers) == 2
    assert [(s.source, s.state) for s in snapshot.sources] == [
        ("hwmon", SourceState.OK),
        ("edac", SourceState.OK),
        ("rasdaemon", SourceState.ABSENT),
    ]


def test_a_raising_source_is_contained_retried_and_logged_once() -> None:
    broken, fine = FakeSource("broken"), FakeSource("fine")
    broken.inject_error(SourceError("BMC 10.0.0.1: timeout"))
    poller = SourcePoller([broken, fine])
    with capture_logs() as logs:
        first = poller.poll()
        poller.poll()
    assert [s.state for s in first.sources] == [SourceState.FAILED, SourceState.OK]
    assert broken.calls == 2
    changes = [e for e in logs if e["event"] == "source_state_changed" and e["source"] == "broken"]
    assert len(changes) == 1 and changes[0]["log_level"] == "warning"
    broken.inject_error(None)
    assert poller.poll().sources[0].state is SourceState.OK


def test_refuses_to_start_when_no_source_works() -> None:
    broken = FakeSource("edac")
    broken.inject_error(OSError(5, "Input/output error"))
    with pytest.raises(NoWorkingSourceError, match="edac=failed"):
        require_working_source(SourcePoller([broken]).poll())
    require_working_source(SourcePoller([FakeSource("hwmon")]).poll())


def test_ipmi_password_is_never_in_the_settings_repr() -> None:
    settings = MonitorsSettings.model_validate(
        {"sources": {"ipmi": {"enabled": True, "password": "hunter2"}}}
    )
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
