"""IPMI source over a hand-written fake BMC client: readings, SEL baseline and clearing, failures, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from monitors.errors import SourceError
from monitors.ipmi import BmcSensor, IpmiSource, SelRecord, read_password
from monitors.readings import ErrorKind, SourceState
from monitors.settings import IpmiSourceSettings


class FakeBmc:
    """Records calls; sensors and SEL are plain lists the test edits; errors can be injected."""

    def __init__(self) -> None:
        self.sensors = [
            BmcSensor(name="Inlet Temp", sensor_type="Temperature", value=24.0, upper_critical=42.0),
            BmcSensor(name="Fan1", sensor_type="Fan", value=5400.0),
            BmcSensor(name="DIMM Temp", sensor_type="Temperature", value=None),
        ]
        self.sel: list[SelRecord] = []
        self.sel_reads = 0
        self._error: SourceError | None = None

    def inject_error(self, error: SourceError | None) -> None:
        self._error = error

    def add_sel(self, event: str, component_type: str = "Memory", *, deassertion: bool = False) -> None:
        record_id = max((r.record_id for r in self.sel), default=0) + 1
        self.sel.append(
            SelRecord(
                record_id=record_id,
                component="DIMM_A1",
                component_type=component_type,
                event=event,
                deassertion=deassertion,
            )
        )

    def read_sensors(self) -> list[BmcSensor]:
        if self._error is not None:
            raise self._error
        return list(self.sensors)

    def sel_last_addition(self) -> int:
        return len(self.sel) * 1000 + sum(r.record_id for r in self.sel)

    def read_sel(self) -> list[SelRecord]:
        self.sel_reads += 1
        return list(self.sel)


def test_temperatures_keep_their_bmc_thresholds() -> None:
    result = IpmiSource(FakeBmc()).poll()
    assert result.status.state is SourceState.OK
    (inlet,) = result.temperatures
    assert (inlet.chip, inlet.sensor, inlet.celsius, inlet.crit_celsius, inlet.source) == (
        "bmc",
        "Inlet Temp",
        24.0,
        42.0,
        "ipmi",
    )


def test_only_new_memory_sel_records_become_events() -> None:
    bmc = FakeBmc()
    bmc.add_sel("Uncorrectable error")
    source = IpmiSource(bmc)
    assert source.poll().memory_events == ()
    bmc.add_sel("Correctable error")
    bmc.add_sel("Upper critical", component_type="Temperature")
    bmc.add_sel("Uncorrectable error", deassertion=True)
    with capture_logs() as logs:
        events = source.poll().memory_events
    assert [(e.event_id, e.kind) for e in events] == [("2", ErrorKind.CORRECTED)]
    assert [e["sel_event"] for e in logs if e["event"] == "bmc_temperature_event"] == ["Upper critical"]


def test_sel_is_not_reread_when_nothing_was_added() -> None:
    bmc = FakeBmc()
    source = IpmiSource(bmc)
    source.poll()
    source.poll()
    assert bmc.sel_reads == 1


def test_cleared_sel_counts_every_record_as_new() -> None:
    bmc = FakeBmc()
    for _ in range(3):
        bmc.add_sel("Correctable error")
    source = IpmiSource(bmc)
    source.poll()
    bmc.sel.clear()
    bmc.add_sel("Uncorrectable error")
    assert [e.kind for e in source.poll().memory_events] == [ErrorKind.UNCORRECTED]


def test_unreachable_bmc_is_a_failed_source_not_a_crash() -> None:
    bmc = FakeBmc()
    bmc.inject_error(SourceError("BMC 10.0.0.9: IpmiException: timeout"))
    result = IpmiSource(bmc).poll()
    assert result.status.state is SourceState.FAILED and "timeout" in result.status.detail


def test_password_sources(tmp_path: Path) -> None:
    secret = tmp_path / "bmc.pass"
    secret.write_text("from-file\n")
    assert read_password(IpmiSourceSettings(password_file=secret), {}) == "from-file"
    assert read_password(IpmiSourceSettings(password_env="BMC_PASSWORD"), {"BMC_PASSWORD": "env"}) == "env"
    with pytest.raises(SourceError, match="BMC_PASSWORD is not set"):
        read_password(IpmiSourceSettings(password_env="BMC_PASSWORD"), {})
    with pytest.raises(ValueError, match="at most one"):
        IpmiSourceSettings.model_validate({"password": "x", "password_env": "Y"})
