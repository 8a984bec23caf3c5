"""Read EDAC memory-controller, csrow and DIMM error counters under a sysfs root into an EdacSnapshot."""

from __future__ import annotations

import re
from pathlib import Path

import structlog

from monitors.readings import (
    ChannelCount,
    CsrowReading,
    DimmReading,
    EdacSnapshot,
    MemoryControllerReading,
    SensorFault,
)
from monitors.sysfs import FileReader, Unreadable, natural_key, optional_text, read_bounded, read_int

log = structlog.get_logger(__name__)

EDAC_MC = Path("devices") / "system" / "edac" / "mc"
_MC = re.compile(r"^mc\d+$")
_CSROW = re.compile(r"^csrow\d+$")
_DIMM = re.compile(r"^(dimm|rank)\d+$")
_CHANNEL = re.compile(r"^ch(\d+)_ce_count$")


class _Counters:
    """Reads counters of one directory, collecting a fault (and None) for each unreadable one."""

    def __init__(self, reader: FileReader, faults: list[SensorFault]) -> None:
        self._reader = reader
        self._faults = faults

    def count(self, path: Path) -> int | None:
        try:
            value = read_int(path, self._reader)
        except Unreadable as exc:
            self._faults.append(_fault(path, str(exc)))
            return None
        if value < 0:
            self._faults.append(_fault(path, f"negative counter: {value}"))
            return None
        return value

    def text(self, path: Path) -> str | None:
        return optional_text(path, self._reader)


def read_edac(sysfs_root: Path, *, reader: FileReader = read_bounded) -> EdacSnapshot:
    """Read every memory controller; no EDAC directory (no driver loaded) is an empty snapshot."""
    mc_root = sysfs_root / EDAC_MC
    try:
        entries = sorted((p for p in mc_root.iterdir() if _MC.match(p.name)), key=natural_key)
    except FileNotFoundError:
        log.debug("edac_absent", path=str(mc_root))
        return EdacSnapshot()
    except OSError as exc:
        return EdacSnapshot(faults=(_fault(mc_root, f"cannot list directory: {exc.strerror}"),))
    faults: list[SensorFault] = []
    counters = _Counters(reader, faults)
    controllers: list[MemoryControllerReading] = []
    for entry in entries:
        try:
            controllers.append(_read_controller(entry, counters))
        except OSError as exc:
            faults.append(_fault(entry, f"controller vanished or unreadable: {exc.strerror}"))
    return EdacSnapshot(memory_controllers=tuple(controllers), faults=tuple(faults))


def _read_controller(directory: Path, counters: _Counters) -> MemoryControllerReading:
    children = sorted(directory.iterdir(), key=natural_key)
    return MemoryControllerReading(
        controller=directory.name,
        mc_name=counters.text(directory / "mc_name"),
        ce_count=counters.count(directory / "ce_count"),
        ue_count=counters.count(directory / "ue_count"),
        ce_noinfo_count=counters.count(directory / "ce_noinfo_count"),
        ue_noinfo_count=counters.count(directory / "ue_noinfo_count"),
        csrows=tuple(_read_csrow(p, counters) for p in children if _CSROW.match(p.name)),
        dimms=tuple(_read_dimm(p, counters) for p in children if _DIMM.match(p.name)),
    )


def _read_csrow(directory: Path, counters: _Counters) -> CsrowReading:
    names = [p.name for p in directory.iterdir()]
    channels = sorted(int(m.group(1)) for n in names if (m := _CHANNEL.match(n)))
    return CsrowReading(
        csrow=directory.name,
        ce_count=counters.count(directory / "ce_count"),
        ue_count=counters.count(directory / "ue_count"),
        channels=tuple(
            ChannelCount(
                channel=f"ch{ch}",
                ce_count=counters.count(directory / f"ch{ch}_ce_count"),
                dimm_label=counters.text(directory / f"ch{ch}_dimm_label"),
            )
            for ch in channels
        ),
    )


def _read_dimm(directory: Path, counters: _Counters) -> DimmReading:
    return DimmReading(
        dimm=directory.name,
        label=counters.text(directory / "dimm_label"),
        ce_count=counters.count(directory / "dimm_ce_count"),
        ue_count=counters.count(directory / "dimm_ue_count"),
    )


def _fault(path: Path, reason: str) -> SensorFault:
    log.warning("sensor_skipped", path=str(path), reason=reason)
    return SensorFault(path=str(path), reason=reason)
