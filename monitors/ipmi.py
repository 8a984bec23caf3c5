"""Read the BMC's temperature sensors (with thresholds) and new SEL memory events over IPMI via pyghmi."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from monitors.errors import SourceError
from monitors.readings import (
    ErrorKind,
    MemoryErrorEvent,
    SensorFault,
    SourceResult,
    SourceState,
    SourceStatus,
    TemperatureReading,
)
from monitors.settings import IpmiSourceSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")

SOURCE = "ipmi"
BMC_CHIP = "bmc"
_NETFN_SENSOR, _GET_THRESHOLDS = 0x04, 0x27
_NETFN_STORAGE, _GET_SEL_INFO = 0x0A, 0x40
_SEL_KINDS = {"correctable error": ErrorKind.CORRECTED, "uncorrectable error": ErrorKind.UNCORRECTED}


@dataclass(frozen=True, slots=True, kw_only=True)
class BmcSensor:
    """One threshold sensor as the BMC reports it, already in engineering units."""

    name: str
    sensor_type: str
    value: float | None
    upper_non_critical: float | None = None
    upper_critical: float | None = None
    upper_non_recoverable: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SelRecord:
    """One System Event Log entry, decoded."""

    record_id: int
    component: str
    component_type: str
    event: str
    deassertion: bool


class IpmiClient(Protocol):
    """The BMC seam; the pyghmi adapter below is the real one, tests may hand in a fake."""

    def read_sensors(self) -> list[BmcSensor]: ...

    def sel_last_addition(self) -> int: ...

    def read_sel(self) -> list[SelRecord]: ...


class IpmiSource:
    """Temperatures every poll; SEL records newer than the last seen (existing ones are the baseline)."""

    name = SOURCE

    def __init__(self, client: IpmiClient) -> None:
        self._client = client
        self._last_record: int | None = None
        self._last_addition: int | None = None

    def poll(self) -> SourceResult:
        try:
            sensors = self._client.read_sensors()
            events = self._new_events()
        except SourceError as exc:
            reason = str(exc)
            log.warning("source_failed", source=SOURCE, reason=reason)
            return SourceResult(
                status=SourceStatus(source=SOURCE, state=SourceState.FAILED, detail=reason),
                faults=(SensorFault(path=SOURCE, reason=reason),),
            )
        return SourceResult(
            status=SourceStatus(source=SOURCE, state=SourceState.OK),
            temperatures=tuple(_temperature(s) for s in sensors if _is_temperature(s)),
            memory_events=events,
        )

    def _new_events(self) -> tuple[MemoryErrorEvent, ...]:
        addition = self._client.sel_last_addition()
        if addition == self._last_addition and self._last_record is not None:
            return ()
        records = self._client.read_sel()
        newest = max((r.record_id for r in records), default=0)
        previous = self._last_record
        self._last_addition = addition
        self._last_record = newest
        if previous is None:
            return ()
        if newest < previous:
            previous = 0  # the SEL was cleared: every record in it is new
        fresh = [r for r in records if r.record_id > previous]
        for record in fresh:
            if record.component_type == "Temperature" and not record.deassertion:
                # The readings drive the verdict; the SEL shows a spike that fell between two polls.
                log.warning("bmc_temperature_event", sensor=record.component, sel_event=record.event)
        return tuple(e for r in fresh if (e := _memory_event(r)) is not None)


def _is_temperature(sensor: BmcSensor) -> bool:
    return sensor.sensor_type == "Temperature" and sensor.value is not None


def _temperature(sensor: BmcSensor) -> TemperatureReading:
    assert sensor.value is not None
    return TemperatureReading(
        chip=BMC_CHIP,
        hwmon="",
        sensor=sensor.name,
        label=sensor.name,
        celsius=sensor.value,
        max_celsius=sensor.upper_non_critical,
        crit_celsius=sensor.upper_critical,
        emergency_celsius=sensor.upper_non_recoverable,
        source=SOURCE,
    )


def _memory_event(record: SelRecord) -> MemoryErrorEvent | None:
    kind = _SEL_KINDS.get(record.event.strip().lower())
    if record.component_type != "Memory" or kind is None or record.deassertion:
        return None
    return MemoryErrorEvent(
        source=SOURCE,
        event_id=str(record.record_id),
        location=record.component,
        kind=kind,
        count=1,
        at=None,
        message=f"BMC SEL #{record.record_id}: {record.event} on {record.component}",
    )


class PyghmiClient:
    """IpmiClient over pyghmi's IPMI-over-LAN session; one session, rebuilt after any failure. `connect`
    opens the session (pyghmi's Command; tests hand in their own)."""

    def __init__(
        self, *, host: str, port: int, username: str, password: str,
        connect: Callable[[], Any] | None = None,
    ) -> None:
        self._connect: Callable[[], Any] = connect or (
            lambda: _pyghmi_command(host, port, username, password))
        self._target = f"BMC {host}:{port}"
        self._command: Any = None

    def read_sensors(self) -> list[BmcSensor]:
        return self._call("reading the sensors (SDR and readings)", self._sensors)

    def sel_last_addition(self) -> int:
        def addition(command: Any) -> int:
            data = bytes(_raw(command, _NETFN_STORAGE, _GET_SEL_INFO, ())["data"])
            return int.from_bytes(data[5:9], "little")

        return self._call("reading the SEL info (Get SEL Info)", addition)

    def read_sel(self) -> list[SelRecord]:
        def records(command: Any) -> list[SelRecord]:
            return [
                SelRecord(
                    record_id=int(e.get("record_id", 0)),
                    component=str(e.get("component", "")),
                    component_type=str(e.get("component_type", "")),
                    event=str(e.get("event", "")),
                    deassertion=bool(e.get("deassertion", False)),
                )
                for e in command.get_event_log()
            ]

        return self._call("reading the SEL (Get SEL Entry)", records)

    def _call(self, what: str, operation: Callable[[Any], T]) -> T:
        from pyghmi.exceptions import IpmiException  # type: ignore[import-untyped]

        doing = what
        try:
            if self._command is None:
                doing = "opening the IPMI-over-LAN session"
                self._command = self._connect()
                doing = what
            return operation(self._command)
        except (IpmiException, OSError, KeyError, ValueError) as exc:
            self._command = None
            raise SourceError(f"{self._target}: {doing} failed: {describe(exc)}") from exc

    def _sensors(self, command: Any) -> list[BmcSensor]:
        sdr = command.init_sdr()
        by_name = {entry.name: entry for entry in sdr.sensors.values()}
        sensors: list[BmcSensor] = []
        for reading in command.get_sensor_data():
            entry = by_name.get(reading.name)
            limits = _thresholds(command, entry) if entry is not None and entry.has_thresholds else {}
            value = reading.value if not reading.unavailable else None
            sensors.append(
                BmcSensor(
                    name=str(reading.name),
                    sensor_type=str(reading.type),
                    value=None if value is None else float(value),
                    **limits,
                )
            )
        return sensors


def describe(exc: BaseException) -> str:
    """The exception's type and text; pyghmi raises some with none (`IpmiException(None)` when a session
    gets no answer), which would read `IpmiException: None`."""
    text = "" if exc.args[:1] == (None,) else str(exc).strip()
    code = getattr(exc, "ipmicode", 0)
    completion = f" (IPMI completion code {code:#04x})" if isinstance(code, int) and code else ""
    return f"{type(exc).__name__}: {text or 'no message'}{completion}"


def _thresholds(command: Any, entry: Any) -> dict[str, float | None]:
    """Get Sensor Thresholds: a readable mask, then raw lnc, lc, lnr, unc, uc, unr (IPMI 2.0 §35.9)."""
    rsp = _raw(command, _NETFN_SENSOR, _GET_THRESHOLDS, (entry.sensor_number,), lun=entry.sensor_lun)
    data = bytes(rsp["data"])
    mask = data[0]

    def limit(bit: int) -> float | None:
        return float(entry.decode_value(command, data[1 + bit])) if mask & (1 << bit) else None

    return {"upper_non_critical": limit(3), "upper_critical": limit(4), "upper_non_recoverable": limit(5)}


def _raw(command: Any, netfn: int, code: int, data: tuple[int, ...], lun: int = 0) -> dict[str, Any]:
    from pyghmi.exceptions import IpmiException

    rsp: dict[str, Any] = command.raw_command(netfn=netfn, command=code, data=data, rslun=lun)
    if "error" in rsp:
        raise IpmiException(rsp["error"], code=rsp.get("code", 0))
    return rsp


def _pyghmi_command(host: str, port: int, username: str, password: str) -> Any:
    from pyghmi.ipmi import command  # type: ignore[import-untyped]

    return command.Command(bmc=host, userid=username, password=password, port=port)


def read_password(settings: IpmiSourceSettings, environ: Mapping[str, str]) -> str:
    """The BMC password from the YAML, `password_file` (first line) or `password_env`; never logged."""
    if settings.password is not None:
        return settings.password.get_secret_value()
    if settings.password_env is not None:
        if settings.password_env not in environ:
            raise SourceError(f"IPMI password_env {settings.password_env} is not set in the environment")
        return environ[settings.password_env]
    if settings.password_file is not None:
        try:
            return Path(settings.password_file).read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise SourceError(f"cannot read IPMI password_file {settings.password_file}: {exc}") from exc
    return ""


def build_ipmi_source(settings: IpmiSourceSettings, environ: Mapping[str, str] | None = None) -> IpmiSource:
    password = read_password(settings, os.environ if environ is None else environ)
    client = PyghmiClient(
        host=settings.host, port=settings.port, username=settings.username, password=password
    )
    return IpmiSource(client)
