"""Read every hwmon temperature channel under a sysfs root into a HwmonSnapshot (millidegrees to Celsius)."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from monitors.readings import HwmonSnapshot, SensorFault, TemperatureReading

log = structlog.get_logger(__name__)

FileReader = Callable[[Path], bytes]
"""Reads one sysfs attribute file; raises OSError as the kernel would (ENODATA, EIO, EAGAIN...)."""

MAX_ATTRIBUTE_BYTES = 4096
_MAX_ANCESTORS = 4
_TEMP_INPUT = re.compile(r"^temp(\d+)_input$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def read_bounded(path: Path) -> bytes:
    """Read a sysfs attribute with exactly one bounded read: some drivers answer EAGAIN forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, MAX_ATTRIBUTE_BYTES)
    finally:
        os.close(fd)


class _Unreadable(Exception):
    """One attribute file could not be used; the message is the fault reason."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Chip:
    name: str
    hwmon: str
    directory: Path


def read_hwmon(sysfs_root: Path, *, reader: FileReader = read_bounded) -> HwmonSnapshot:
    """Read all temperature channels of all chips; a missing /sys/class/hwmon is an empty snapshot."""
    class_dir = sysfs_root / "class" / "hwmon"
    try:
        entries = sorted(class_dir.iterdir(), key=_natural_key)
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
    # Old drivers keep their attributes in the device directory rather than in hwmonN itself.
    if not (directory / "name").exists() and (directory / "device" / "name").exists():
        directory = directory / "device"
    driver_name = _read_text(directory / "name", reader)
    device_id = _device_id(entry)
    parts = [p for p in (driver_name, device_id) if p]
    name = _UNSAFE.sub("_", "-".join(parts)) if parts else hwmon
    if name in used_names:
        name = f"{name}-{hwmon}"
    return _Chip(name=name, hwmon=hwmon, directory=directory)


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


def _read_text(path: Path, reader: FileReader) -> str | None:
    try:
        text = reader(path).decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


def _read_chip(
    chip: _Chip, reader: FileReader, temperatures: list[TemperatureReading], faults: list[SensorFault]
) -> None:
    try:
        names = [p.name for p in chip.directory.iterdir()]
    except OSError as exc:
        faults.append(_fault(chip.directory, f"chip vanished or unreadable: {exc.strerror}"))
        return
    channels = sorted(int(m.group(1)) for n in names if (m := _TEMP_INPUT.match(n)))
    for index in channels:
        try:
            temperatures.append(_read_channel(chip, f"temp{index}", reader))
        except _Unreadable as exc:
            faults.append(_fault(chip.directory / f"temp{index}_input", str(exc), chip=chip.name))


def _read_channel(chip: _Chip, sensor: str, reader: FileReader) -> TemperatureReading:
    base = chip.directory
    if _optional_text(base / f"{sensor}_fault", reader) == "1":
        raise _Unreadable("fault flag set by the driver")
    celsius = _millidegrees(base / f"{sensor}_input", reader, required=True)
    assert celsius is not None

    def limit(suffix: str) -> float | None:
        return _limit(base / f"{sensor}_{suffix}", reader)

    return TemperatureReading(
        chip=chip.name,
        hwmon=chip.hwmon,
        sensor=sensor,
        label=_optional_text(base / f"{sensor}_label", reader),
        celsius=celsius,
        max_celsius=limit("max"),
        crit_celsius=limit("crit"),
        emergency_celsius=limit("emergency"),
        max_hyst_celsius=limit("max_hyst"),
        crit_hyst_celsius=limit("crit_hyst"),
    )


def _limit(path: Path, reader: FileReader) -> float | None:
    """Limit files are optional: an absent or broken one is simply no limit."""
    try:
        return _millidegrees(path, reader, required=False)
    except _Unreadable:
        return None


def _millidegrees(path: Path, reader: FileReader, *, required: bool) -> float | None:
    try:
        raw = reader(path)
    except FileNotFoundError:
        if required:
            raise _Unreadable("file vanished") from None
        return None
    except OSError as exc:
        raise _Unreadable(_errno_reason(exc)) from exc
    text = raw.decode("ascii", errors="replace").strip()
    if not text:
        raise _Unreadable("empty file")
    try:
        return int(text) / 1000.0
    except ValueError:
        raise _Unreadable(f"not an integer millidegree value: {text[:32]!r}") from None


def _optional_text(path: Path, reader: FileReader) -> str | None:
    try:
        return reader(path).decode("utf-8", errors="replace").strip() or None
    except OSError:
        return None


def _errno_reason(exc: OSError) -> str:
    if exc.errno == errno.ENODATA:
        return "channel disabled (ENODATA)"
    if exc.errno is not None and exc.errno in errno.errorcode:
        return f"read failed ({errno.errorcode[exc.errno]})"
    return f"read failed ({exc})"


def _fault(path: Path, reason: str, *, chip: str | None = None) -> SensorFault:
    level = log.debug if "ENODATA" in reason else log.warning
    level("sensor_skipped", path=str(path), reason=reason, chip=chip)
    return SensorFault(path=str(path), reason=reason)


def _natural_key(path: Path) -> tuple[str, int]:
    match = re.match(r"^(\D*)(\d+)$", path.name)
    return (match.group(1), int(match.group(2))) if match else (path.name, -1)
