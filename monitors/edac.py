"""Read EDAC memory-controller, csrow and DIMM error counters under a sysfs root into an EdacSnapshot."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
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
DEFAULT_REFRESH_EVERY_POLLS = 60
_MC = re.compile(r"^mc\d+$")
_CSROW = re.compile(r"^csrow\d+$")
_DIMM = re.compile(r"^(dimm|rank)\d+$")
_CHANNEL = re.compile(r"^ch(\d+)_ce_count$")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Channel:
    channel: str
    label: str | None
    ce_path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class _Csrow:
    csrow: str
    ce_path: Path
    ue_path: Path
    channels: tuple[_Channel, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Dimm:
    dimm: str
    label: str | None
    ce_path: Path
    ue_path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class _Controller:
    """The layout and labels of one controller; counters are read every poll, these only on refresh."""

    mc_name: str | None
    counter_paths: tuple[Path, Path, Path, Path]
    csrows: tuple[_Csrow, ...]
    dimms: tuple[_Dimm, ...]
    built_at_poll: int


class _Counters:
    """Reads counters, collecting a fault (and None) for each unreadable one; notes vanished files."""

    def __init__(self, reader: FileReader, faults: list[SensorFault]) -> None:
        self._reader = reader
        self._faults = faults
        self.vanished = False

    def count(self, path: Path) -> int | None:
        try:
            value = read_int(path, self._reader)
        except Unreadable as exc:
            self.vanished = self.vanished or str(exc) == "file vanished"
            self._faults.append(_fault(path, str(exc)))
            return None
        if value < 0:
            self._faults.append(_fault(path, f"negative counter: {value}"))
            return None
        return value


class EdacReader:
    """Polls EDAC; controller layout and labels are cached and re-read every `refresh_every_polls`."""

    def __init__(
        self,
        sysfs_root: Path,
        *,
        reader: FileReader = read_bounded,
        refresh_every_polls: int = DEFAULT_REFRESH_EVERY_POLLS,
    ) -> None:
        self._mc_root = sysfs_root / EDAC_MC
        self._reader = reader
        self._refresh = refresh_every_polls
        self._controllers: dict[str, _Controller] = {}
        self._polls = 0

    def read(self) -> EdacSnapshot:
        """Read every memory controller; no EDAC directory (no driver loaded) is an empty snapshot."""
        self._polls += 1
        try:
            names = sorted(
                (n for n in os.listdir(self._mc_root) if _MC.match(n)), key=lambda n: natural_key(Path(n))
            )
        except FileNotFoundError:
            log.debug("edac_absent", path=str(self._mc_root))
            self._controllers.clear()
            return EdacSnapshot()
        except OSError as exc:
            return EdacSnapshot(faults=(_fault(self._mc_root, f"cannot list directory: {exc.strerror}"),))
        faults: list[SensorFault] = []
        readings: list[MemoryControllerReading] = []
        for name in names:
            layout = self._layout(name, faults)
            if layout is None:
                continue
            counters = _Counters(self._reader, faults)
            readings.append(_read_controller(name, layout, counters))
            if counters.vanished:
                self._controllers.pop(name, None)
        for gone in set(self._controllers) - set(names):
            del self._controllers[gone]
        return EdacSnapshot(memory_controllers=tuple(readings), faults=tuple(faults))

    def _layout(self, name: str, faults: list[SensorFault]) -> _Controller | None:
        cached = self._controllers.get(name)
        if cached is not None and self._polls - cached.built_at_poll < self._refresh:
            return cached
        directory = self._mc_root / name
        try:
            layout = _discover(directory, self._reader, self._polls)
        except OSError as exc:
            faults.append(_fault(directory, f"controller vanished or unreadable: {exc.strerror}"))
            self._controllers.pop(name, None)
            return None
        self._controllers[name] = layout
        return layout


def read_edac(sysfs_root: Path, *, reader: FileReader = read_bounded) -> EdacSnapshot:
    """One uncached read of every controller (for one-shot tools and tests)."""
    return EdacReader(sysfs_root, reader=reader).read()


def _discover(directory: Path, reader: FileReader, poll: int) -> _Controller:
    children = sorted(os.listdir(directory), key=lambda n: natural_key(Path(n)))
    csrows: list[_Csrow] = []
    for child in (c for c in children if _CSROW.match(c)):
        row = directory / child
        numbers = sorted(int(m.group(1)) for n in os.listdir(row) if (m := _CHANNEL.match(n)))
        channels = tuple(
            _Channel(
                channel=f"ch{n}",
                label=optional_text(row / f"ch{n}_dimm_label", reader),
                ce_path=row / f"ch{n}_ce_count",
            )
            for n in numbers
        )
        csrows.append(
            _Csrow(csrow=child, ce_path=row / "ce_count", ue_path=row / "ue_count", channels=channels)
        )
    dimms = tuple(
        _Dimm(
            dimm=c,
            label=optional_text(directory / c / "dimm_label", reader),
            ce_path=directory / c / "dimm_ce_count",
            ue_path=directory / c / "dimm_ue_count",
        )
        for c in children
        if _DIMM.match(c)
    )
    counters = ("ce_count", "ue_count", "ce_noinfo_count", "ue_noinfo_count")
    ce, ue, ce_noinfo, ue_noinfo = (directory / c for c in counters)
    return _Controller(
        mc_name=optional_text(directory / "mc_name", reader),
        counter_paths=(ce, ue, ce_noinfo, ue_noinfo),
        csrows=tuple(csrows),
        dimms=dimms,
        built_at_poll=poll,
    )


def _read_controller(name: str, layout: _Controller, counters: _Counters) -> MemoryControllerReading:
    ce, ue, ce_noinfo, ue_noinfo = (counters.count(p) for p in layout.counter_paths)
    return MemoryControllerReading(
        controller=name,
        mc_name=layout.mc_name,
        ce_count=ce,
        ue_count=ue,
        ce_noinfo_count=ce_noinfo,
        ue_noinfo_count=ue_noinfo,
        csrows=tuple(
            CsrowReading(
                csrow=row.csrow,
                ce_count=counters.count(row.ce_path),
                ue_count=counters.count(row.ue_path),
                channels=tuple(
                    ChannelCount(channel=ch.channel, ce_count=counters.count(ch.ce_path), dimm_label=ch.label)
                    for ch in row.channels
                ),
            )
            for row in layout.csrows
        ),
        dimms=tuple(
            DimmReading(
                dimm=d.dimm,
                label=d.label,
                ce_count=counters.count(d.ce_path),
                ue_count=counters.count(d.ue_path),
            )
            for d in layout.dimms
        ),
    )


def _fault(path: Path, reason: str) -> SensorFault:
    log.warning("sensor_skipped", path=str(path), reason=reason)
    return SensorFault(path=str(path), reason=reason)
