"""Read every hwmon temperature channel under a sysfs root into a HwmonSnapshot (millidegrees to Celsius)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import structlog

from monitors.readings import HwmonSnapshot, SensorFault, TemperatureReading
from monitors.sysfs import FileReader, Unreadable, natural_key, optional_text, read_bounded, read_int

log = structlog.get_logger(__name__)

_MAX_ANCESTORS = 4
_TEMP_INPUT = re.compile(r"^temp(\d+)_input$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")

__all__ = ["FileReader", "read_bounded", "read_hwmon"]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Chip:
    name: str
    hwmon: str
    directory: Path
    files: frozenset[str]


def read_hwmon(sysfs_root: Path, *, reader: FileReader = read_bounded) -> HwmonSnapshot:
    """Read all temperature channels of all chips; a missing /sys/class/hwmon is an empty snapshot."""
    class_dir = sysfs_root / "class" / "hwmon"
    try:
        entries = sorted(class_dir.iterdir(), key=natural_key)
    except FileNotFoundError:
        log.debug("hwmon_absent", path=str(class_dir))
        return HwmonSnapshot()
    except OSError as exc:
        return HwmonSnapshot(faults=(_fault(class_dir, f"cannot list directory: {exc.strerror}"),))
    temperatures: list[TemperatureReading] = []
    faults: list[SensorFault] = []
    used_names: set[str] = set()
    for entry in entries:
        try:
            chip = _identify_chip(entry, reader, used_names)
        except OSError as exc:
            faults.append(_fault(entry, f"chip vanished or unreadable: {exc.strerror}"))
            continue
        used_names.add(chip.name)
        _read_chip(chip, reader, temperatures, faults)
    return HwmonSnapshot(temperatures=tuple(temperatures), faults=tuple(faults))


def _identify_chip(entry: Path, reader: FileReader, used_names: set[str]) -> _Chip:
    """Name a chip from its device link and `name` file; `hwmonN` is only the last resort."""
    hwmon = entry.name
    directory = entry.resolve(strict=True)
    files = frozenset(p.name for p in directory.iterdir())
    # Old drivers keep their attributes in the device directory rather than in hwmonN itself.
    if "name" not in files and (directory / "device" / "name").exists():
        directory = directory / "device"
        files = frozenset(p.name for p in directory.iterdir())
    driver_name = optional_text(directory / "name", reader)
    parts = [p for p in (driver_name, _device_id(entry)) if p]
    name = _UNSAFE.sub("_", "-".join(parts)) if parts else hwmon
    if name in used_names:
        name = f"{name}-{hwmon}"
    return _Chip(name=name, hwmon=hwmon, directory=directory, files=files)


def _device_id(entry: Path) -> str | None:
    """`<bus>-<device>` from the device link, e.g. `pci-0000:3d:00.0`, `platform-coretemp.0`.

    Class devices (an nvme controller, a thermal zone) are renumbered across boots like hwmonN, so walk up
    to the first ancestor on a bus; a purely virtual device keeps `<class>-<device>`.
    """
    device = entry / "device"
    if not device.is_dir():
        return None
    real = device.resolve()
    node = real
    for _ in range(_MAX_ANCESTORS):
        subsystem = node / "subsystem"
        if subsystem.is_symlink():
            target = subsystem.resolve()
            if target.parent.name == "bus":
                return f"{target.name}-{node.name}"
        if node.parent == node:
            break
        node = node.parent
    subsystem = real / "subsystem"
    return f"{subsystem.resolve().name}-{real.name}" if subsystem.is_symlink() else real.name


def _read_chip(
    chip: _Chip, reader: FileReader, temperatures: list[TemperatureReading], faults: list[SensorFault]
) -> None:
    channels = sorted(int(m.group(1)) for n in chip.files if (m := _TEMP_INPUT.match(n)))
    for index in channels:
        try:
            temperatures.append(_read_channel(chip, f"temp{index}", reader))
        except Unreadable as exc:
            faults.append(_fault(chip.directory / f"temp{index}_input", str(exc), chip=chip.name))


def _read_channel(chip: _Chip, sensor: str, reader: FileReader) -> TemperatureReading:
    def present(suffix: str) -> Path | None:
        name = f"{sensor}_{suffix}"
        return chip.directory / name if name in chip.files else None

    def limit(suffix: str) -> float | None:
        """Limit files are optional: an absent or broken one is simply no limit."""
        path = present(suffix)
        try:
            return None if path is None else read_int(path, reader) / 1000.0
        except Unreadable:
            return None

    fault = present("fault")
    if fault is not None and optional_text(fault, reader) == "1":
        raise Unreadable("fault flag set by the driver")
    try:
        celsius = read_int(chip.directory / f"{sensor}_input", reader) / 1000.0
    except Unreadable as exc:
        raise Unreadable(str(exc).replace("not an integer", "not an integer millidegree value")) from None
    label = present("label")
    return TemperatureReading(
        chip=chip.name,
        hwmon=chip.hwmon,
        sensor=sensor,
        label=None if label is None else optional_text(label, reader),
        celsius=celsius,
        max_celsius=limit("max"),
        crit_celsius=limit("crit"),
        emergency_celsius=limit("emergency"),
        max_hyst_celsius=limit("max_hyst"),
        crit_hyst_celsius=limit("crit_hyst"),
    )


def _fault(path: Path, reason: str, *, chip: str | None = None) -> SensorFault:
    level = log.debug if "ENODATA" in reason else log.warning
    level("sensor_skipped", path=str(path), reason=reason, chip=chip)
    return SensorFault(path=str(path), reason=reason)
