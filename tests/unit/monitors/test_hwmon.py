"""hwmon reader over fake /sys trees: stable chip names, units, one bad file never hides the others."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from monitors.hwmon import read_hwmon
from tests.unit.monitors.fakes import FakeSysfsReader

SYSFS = Path(__file__).resolve().parents[2] / "data" / "sysfs"


def _summary(root: Path) -> list[tuple[str, str, str, str | None, float, float | None, float | None]]:
    return [
        (r.chip, r.hwmon, r.sensor, r.label, r.celsius, r.max_celsius, r.crit_celsius)
        for r in read_hwmon(root).temperatures
    ]


def test_intel_server_chips_are_named_from_device_links_not_hwmon_numbers() -> None:
    assert _summary(SYSFS / "intel-2s") == [
        ("acpitz-thermal-thermal_zone0", "hwmon0", "temp1", None, 27.8, None, 119.0),
        ("coretemp-platform-coretemp.0", "hwmon1", "temp1", "Package id 0", 41.0, 84.0, 94.0),
        ("coretemp-platform-coretemp.0", "hwmon1", "temp2", "Core 0", 38.0, 84.0, 94.0),
        ("coretemp-platform-coretemp.0", "hwmon1", "temp3", "Core 1", 39.0, 84.0, 94.0),
        ("coretemp-platform-coretemp.1", "hwmon2", "temp1", "Package id 1", 44.0, 84.0, 94.0),
        ("coretemp-platform-coretemp.1", "hwmon2", "temp2", "Core 0", 43.0, 84.0, 94.0),
        ("coretemp-platform-coretemp.1", "hwmon2", "temp3", "Core 1", 45.0, 84.0, 94.0),
        ("nvme-pci-0000:3d:00.0", "hwmon3", "temp1", "Composite", 38.85, 84.85, 84.85),
        ("nvme-pci-0000:3d:00.0", "hwmon3", "temp2", "Sensor 1", 38.85, 65261.85, None),
    ]


def test_hysteresis_and_emergency_limits_are_read_in_celsius() -> None:
    snapshot = read_hwmon(SYSFS / "amd-epyc")
    cputin = next(r for r in snapshot.temperatures if r.label == "CPUTIN")
    assert (cputin.max_hyst_celsius, cputin.crit_hyst_celsius, cputin.emergency_celsius) == (
        75.0,
        100.0,
        110.0,
    )


def test_channel_with_fault_flag_is_skipped_with_a_fault() -> None:
    snapshot = read_hwmon(SYSFS / "amd-epyc")
    assert "AUXTIN1" not in {r.label for r in snapshot.temperatures}
    assert [f.reason for f in snapshot.faults] == ["fault flag set by the driver"]


def test_garbage_and_empty_files_are_skipped_and_logged_while_other_sensors_read() -> None:
    with capture_logs() as logs:
        snapshot = read_hwmon(SYSFS / "faulty")
    assert [(r.chip, r.sensor, r.celsius) for r in snapshot.temperatures] == [
        ("coretemp-platform-coretemp.0", "temp1", 51.0),
        ("coretemp-platform-coretemp.0", "temp4", 49.0),
        ("dell_smm", "temp1", 33.0),
    ]
    reasons = {Path(f.path).name: f.reason for f in snapshot.faults}
    assert reasons == {
        "temp2_input": "not an integer millidegree value: 'garbage'",
        "temp3_input": "empty file",
        "hwmon1": "chip vanished or unreadable: No such file or directory",
    }
    skipped = [e for e in logs if e["event"] == "sensor_skipped"]
    assert len(skipped) == 3
    assert all(e["log_level"] == "warning" and e["path"] and e["reason"] for e in skipped)


def test_garbage_limit_file_means_no_limit_not_a_lost_channel() -> None:
    core2 = next(r for r in read_hwmon(SYSFS / "faulty").temperatures if r.sensor == "temp4")
    assert core2.max_celsius is None


def test_missing_hwmon_class_is_an_empty_snapshot(tmp_path: Path) -> None:
    snapshot = read_hwmon(tmp_path)
    assert snapshot.temperatures == () and snapshot.faults == ()


@pytest.mark.parametrize(
    ("code", "reason", "level"),
    [
        (errno.ENODATA, "channel disabled (ENODATA)", "debug"),
        (errno.EIO, "read failed (EIO)", "warning"),
        (errno.EAGAIN, "read failed (EAGAIN)", "warning"),
    ],
)
def test_read_errors_skip_only_that_channel(code: int, reason: str, level: str) -> None:
    reader = FakeSysfsReader()
    reader.inject_error("coretemp.1/hwmon/hwmon2/temp2_input", code)
    with capture_logs() as logs:
        snapshot = read_hwmon(SYSFS / "intel-2s", reader=reader)
    assert len(snapshot.temperatures) == 8
    assert [f.reason for f in snapshot.faults] == [reason]
    assert [e["log_level"] for e in logs if e["event"] == "sensor_skipped"] == [level]


def test_each_file_is_read_once_per_poll() -> None:
    reader = FakeSysfsReader()
    read_hwmon(SYSFS / "intel-2s", reader=reader)
    assert len(reader.calls) == len(set(reader.calls))


def test_duplicate_chip_names_get_the_hwmon_directory_as_a_last_resort(tmp_path: Path) -> None:
    for index in (0, 1):
        chip = tmp_path / "class" / "hwmon" / f"hwmon{index}"
        chip.mkdir(parents=True)
        (chip / "name").write_text("drivetemp\n")
        (chip / "temp1_input").write_text("30000\n")
    chips = [r.chip for r in read_hwmon(tmp_path).temperatures]
    assert chips == ["drivetemp", "drivetemp-hwmon1"]


def _copy_tree(tmp_path: Path, tree: str) -> Path:
    import shutil

    root = tmp_path / tree
    shutil.copytree(SYSFS / tree, root, symlinks=True)
    return root


def test_cached_reader_rereads_inputs_every_poll_and_limits_on_refresh(tmp_path: Path) -> None:
    from monitors.hwmon import HwmonReader

    root = _copy_tree(tmp_path, "intel-2s")
    chip = root / "devices/platform/coretemp.0/hwmon/hwmon1"
    reader = HwmonReader(root, refresh_every_polls=3)
    reader.read()
    (chip / "temp1_input").write_text("97000\n")
    (chip / "temp1_max").write_text("70000\n")
    package = next(r for r in reader.read().temperatures if r.label == "Package id 0")
    assert (package.celsius, package.max_celsius) == (97.0, 84.0)
    reader.read()
    package = next(r for r in reader.read().temperatures if r.label == "Package id 0")
    assert package.max_celsius == 70.0


def test_chip_that_vanishes_and_returns_is_rediscovered(tmp_path: Path) -> None:
    from monitors.hwmon import HwmonReader

    root = _copy_tree(tmp_path, "intel-2s")
    reader = HwmonReader(root)
    assert len(reader.read().temperatures) == 9
    link = root / "class/hwmon/hwmon3"
    target = link.readlink()
    link.unlink()
    assert len(reader.read().temperatures) == 7
    link.symlink_to(target)
    assert len(reader.read().temperatures) == 9
    (root / "devices/platform/coretemp.1/hwmon/hwmon2/temp3_input").unlink()
    snapshot = reader.read()
    assert len(snapshot.temperatures) == 8 and snapshot.faults[0].reason == "file vanished"
    assert len(reader.read().temperatures) == 8 and reader.read().faults == ()
