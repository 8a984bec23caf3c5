"""Read every hwmon temperature channel under a sysfs root into a HwmonSnapshot (millidegrees to Celsius)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import structlog

from monitors.readings import HwmonSnapshot, SensorFault, TemperatureReading
from monitors.sysfs import FileReader, Unreadable, natural_key, optional_text, read_bounded, read_int

log = structlog.get_logger(__name__)

DEFAULT_REFRESH_EVERY_POLLS = 60
_MAX_ANCESTORS = 4
_TEMP_INPUT = re.compile(r"^temp(\d+)_input$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")

__all__ = ["FileReader", "HwmonReader", "read_bounded", "read_hwmon"]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Channel:
    """What rarely changes about a channel: its files, label and limits (re-read on refresh)."""

    sensor: str
    input_path: Path
    fault_path: Path | None
    label: str | None
    max_celsius: float | None
    crit_celsius: float | None
    emergency_celsius: float | None
    max_hyst_celsius: float | None
    crit_hyst_celsius: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Chip:
    base_name: str
    hwmon: str
    target: str
    directory: Path
    channels: tuple[_Channel, ...]
    built_at_poll: int


class HwmonReader:
    """Polls hwmon; chip layout, labels and limits are cached and re-read every `refresh_every_polls`.

    Only `tempN_input` (and `tempN_fault` where it exists) is read on every poll, which keeps a 64-channel
    host well under a few milliseconds of CPU. A chip whose link target changes or whose file vanishes is
    re-discovered at once.
    """

    def __init__(
        self,
        sysfs_root: Path,
        *,
        reader: FileReader = read_bounded,
        refresh_every_polls: int = DEFAULT_REFRESH_EVERY_POLLS,
    ) -> None:
        self._class_dir = sysfs_root / "class" / "hwmon"
        self._reader = reader
        self._refresh = refresh_every_polls
        self._chips: dict[str, _Chip] = {}
        self._polls = 0

    def read(self) -> HwmonSnapshot:
        """Read all temperature channels of all chips; a missing /sys/class/hwmon is an empty snapshot."""
        self._polls += 1
        try:
            names = sorted(os.listdir(self._class_dir), key=lambda n: natural_key(Path(n)))
        except FileNotFoundError:
            log.debug("hwmon_absent", path=str(self._class_dir))
            self._chips.clear()
            return HwmonSnapshot()
        except OSError as exc:
            return HwmonSnapshot(faults=(_fault(self._class_dir, f"cannot list directory: {exc.strerror}"),))
        temperatures: list[TemperatureReading] = []
        faults: list[SensorFault] = []
        used_names: set[str] = set()
        for name in names:
            chip = self._chip(name, faults)
            if chip is None:
                continue
            chip_name = (
                chip.base_name if chip.base_name not in used_names else f"{chip.base_name}-{chip.hwmon}"
            )
            used_names.add(chip_name)
            if not self._read_channels(chip, chip_name, temperatures, faults):
                self._chips.pop(name, None)
        for gone in set(self._chips) - set(names):
            del self._chips[gone]
        return HwmonSnapshot(temperatures=tuple(temperatures), faults=tuple(faults))

    def _chip(self, name: str, faults: list[SensorFault]) -> _Chip | None:
        entry = self._class_dir / name
        try:
            target = os.readlink(entry) if entry.is_symlink() else ""
        except OSError:
            target = ""
        cached = self._chips.get(name)
        if (
            cached is not None
            and cached.target == target
            and self._polls - cached.built_at_poll < self._refresh
        ):
            return cached
        try:
            chip = _discover(entry, target, self._reader, self._polls)
        except OSError as exc:
            self._chips.pop(name, None)
            faults.append(_fault(entry, f"chip vanished or unreadable: {exc.strerror}"))
            return None
        self._chips[name] = chip
        return chip

    def _read_channels(
        self, chip: _Chip, chip_name: str, temperatures: list[TemperatureReading], faults: list[SensorFault]
    ) -> bool:
        """Append the chip's readings; False when a file vanished and the layout must be rediscovered."""
        intact = True
        for channel in chip.channels:
            try:
                if channel.fault_path is not None and optional_text(channel.fault_path, self._reader) == "1":
                    raise Unreadable("fault flag set by the driver")
                celsius = _millidegrees(channel.input_path, self._reader)
            except Unreadable as exc:
                intact = intact and str(exc) != "file vanished"
                faults.append(_fault(channel.input_path, str(exc), chip=chip_name))
                continue
            temperatures.append(
                TemperatureReading(
                    chip=chip_name,
                    hwmon=chip.hwmon,
                    sensor=channel.sensor,
                    label=channel.label,
                    celsius=celsius,
                    max_celsius=channel.max_celsius,
                    crit_celsius=channel.crit_celsius,
                    emergency_celsius=channel.emergency_celsius,
                    max_hyst_celsius=channel.max_hyst_celsius,
                    crit_hyst_celsius=channel.crit_hyst_celsius,
                )
            )
        return intact


def read_hwmon(sysfs_root: Path, *, reader: FileReader = read_bounded) -> HwmonSnapshot:
    """One uncached read of every chip (for one-shot tools and tests)."""
    return HwmonReader(sysfs_root, reader=reader).read()


def _discover(entry: Path, target: str, reader: FileReader, poll: int) -> _Chip:
    """Name a chip from its device link and `name` file (`hwmonN` only as the last resort); list channels."""
    directory = entry.resolve(strict=True)
    files = frozenset(os.listdir(directory))
    # Old drivers keep their attributes in the device directory rather than in hwmonN itself.
    if "name" not in files and (directory / "device" / "name").exists():
        directory = directory / "device"
        files = frozenset(os.listdir(directory))
    driver_name = optional_text(directory / "name", reader)
    parts = [p for p in (driver_name, _device_id(entry)) if p]
    base_name = _UNSAFE.sub("_", "-".join(parts)) if parts else entry.name
    numbers = sorted(int(m.group(1)) for n in files if (m := _TEMP_INPUT.match(n)))
    channels = tuple(_channel(directory, files, f"temp{n}", reader) for n in numbers)
    return _Chip(
        base_name=base_name,
        hwmon=entry.name,
        target=target,
        directory=directory,
        channels=channels,
        built_at_poll=poll,
    )


def _channel(directory: Path, files: frozenset[str], sensor: str, reader: FileReader) -> _Channel:
    def present(suffix: str) -> Path | None:
        name = f"{sensor}_{suffix}"
        return directory / name if name in files else None

    def limit(suffix: str) -> float | None:
        """Limit files are optional: an absent or broken one is simply no limit."""
        path = present(suffix)
        try:
            return None if path is None else read_int(path, reader) / 1000.0
        except Unreadable:
            return None

    label = present("label")
    return _Channel(
        sensor=sensor,
        input_path=directory / f"{sensor}_input",
        fault_path=present("fault"),
        label=None if label is None else optional_text(label, reader),
        max_celsius=limit("max"),
        crit_celsius=limit("crit"),
        emergency_celsius=limit("emergency"),
        max_hyst_celsius=limit("max_hyst"),
        crit_hyst_celsius=limit("crit_hyst"),
    )


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


def _millidegrees(path: Path, reader: FileReader) -> float:
    try:
        return read_int(path, reader) / 1000.0
    except Unreadable as exc:
        raise Unreadable(str(exc).replace("not an integer", "not an integer millidegree value")) from None


def _fault(path: Path, reason: str, *, chip: str | None = None) -> SensorFault:
    level = log.debug if "ENODATA" in reason else log.warning
    level("sensor_skipped", path=str(path), reason=reason, chip=chip)
    return SensorFault(path=str(path), reason=reason)
