"""Rebuild the committed fake /sys trees (exact kernel file formats) that the monitor tests read.

Run from the repository root: `.venv/bin/python tests/data/sysfs/build_trees.py`. The trees are committed;
this script documents how they were shaped and regenerates them byte for byte.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def hwmon(
    root: Path, index: int, device_rel: str, name: str, attrs: dict[str, str], *, via: str = ""
) -> None:
    """A hwmon class device under `devices/<device_rel>/[via/]hwmon/hwmonN`, linked from class/hwmon."""
    parent = root / "devices" / device_rel
    hw = parent / via / "hwmon" / f"hwmon{index}" if via else parent / "hwmon" / f"hwmon{index}"
    write(hw / "name", name + "\n")
    for attr, value in attrs.items():
        write(hw / attr, value + "\n")
    device_target = os.path.relpath(parent / via if via else parent, hw)
    link(hw / "device", device_target)
    link(hw / "subsystem", os.path.relpath(root / "class" / "hwmon", hw))
    link(root / "class" / "hwmon" / f"hwmon{index}", os.path.relpath(hw, root / "class" / "hwmon"))


def bus_device(root: Path, device_rel: str, bus: str) -> None:
    dev = root / "devices" / device_rel
    dev.mkdir(parents=True, exist_ok=True)
    link(dev / "subsystem", os.path.relpath(root / "bus" / bus, dev))
    (root / "bus" / bus).mkdir(parents=True, exist_ok=True)


def class_device(root: Path, device_rel: str, klass: str) -> None:
    dev = root / "devices" / device_rel
    dev.mkdir(parents=True, exist_ok=True)
    link(dev / "subsystem", os.path.relpath(root / "class" / klass, dev))
    (root / "class" / klass).mkdir(parents=True, exist_ok=True)


def coretemp(cores: list[int], package: int, pkg_milli: int, core_milli: list[int]) -> dict[str, str]:
    attrs = {
        "temp1_label": f"Package id {package}",
        "temp1_input": str(pkg_milli),
        "temp1_max": "84000",
        "temp1_crit": "94000",
        "temp1_crit_alarm": "0",
    }
    for i, (core, milli) in enumerate(zip(cores, core_milli, strict=True), start=2):
        attrs |= {
            f"temp{i}_label": f"Core {core}",
            f"temp{i}_input": str(milli),
            f"temp{i}_max": "84000",
            f"temp{i}_crit": "94000",
            f"temp{i}_crit_alarm": "0",
        }
    return attrs


def mc(root: Path, index: int, name: str, counts: tuple[int, int, int, int], size_mb: int) -> Path:
    base = root / "devices" / "system" / "edac" / "mc" / f"mc{index}"
    ce, ue, ce_noinfo, ue_noinfo = counts
    for attr, value in {
        "mc_name": name,
        "size_mb": str(size_mb),
        "ce_count": str(ce),
        "ue_count": str(ue),
        "ce_noinfo_count": str(ce_noinfo),
        "ue_noinfo_count": str(ue_noinfo),
        "seconds_since_reset": "873412",
        "max_location": "memory 3 ",
    }.items():
        write(base / attr, value + "\n")
    return base


def dimm(mc_dir: Path, kind: str, index: int, label: str, ce: int, ue: int, location: str) -> None:
    base = mc_dir / f"{kind}{index}"
    for attr, value in {
        "dimm_label": label,
        "dimm_ce_count": str(ce),
        "dimm_ue_count": str(ue),
        "dimm_location": location,
        "size": "32768",
        "dimm_mem_type": "Registered-DDR4",
        "dimm_dev_type": "x4",
        "dimm_edac_mode": "S4ECD4ED",
    }.items():
        write(base / attr, value + "\n")


def csrow(mc_dir: Path, index: int, channels: list[tuple[int, str]], ue: int) -> None:
    base = mc_dir / f"csrow{index}"
    write(base / "ce_count", f"{sum(ce for ce, _ in channels)}\n")
    write(base / "ue_count", f"{ue}\n")
    write(base / "size_mb", "16384\n")
    write(base / "mem_type", "Registered-DDR4\n")
    write(base / "edac_mode", "SECDED\n")
    write(base / "dev_type", "x4\n")
    for ch, (ce, label) in enumerate(channels):
        write(base / f"ch{ch}_ce_count", f"{ce}\n")
        write(base / f"ch{ch}_dimm_label", f"{label}\n")


def intel_server(root: Path) -> None:
    """Two-socket Xeon: ACPI thermal zone, two coretemp packages, an NVMe drive, skx_edac with dimmN."""
    class_device(root, "virtual/thermal/thermal_zone0", "thermal")
    hwmon(
        root, 0, "virtual/thermal/thermal_zone0", "acpitz", {"temp1_input": "27800", "temp1_crit": "119000"}
    )
    for socket in (0, 1):
        bus_device(root, f"platform/coretemp.{socket}", "platform")
        milli = [41000, 38000, 39000] if socket == 0 else [44000, 43000, 45000]
        hwmon(
            root,
            1 + socket,
            f"platform/coretemp.{socket}",
            "coretemp",
            coretemp([0, 1], socket, milli[0], milli[1:]),
        )
    bus_device(root, "pci0000:00/0000:00:1d.0/0000:3d:00.0", "pci")
    class_device(root, "pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0", "nvme")
    hwmon(
        root,
        3,
        "pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0",
        "nvme",
        {
            "temp1_label": "Composite",
            "temp1_input": "38850",
            "temp1_max": "84850",
            "temp1_min": "-273150",
            "temp1_crit": "84850",
            "temp1_alarm": "0",
            "temp2_label": "Sensor 1",
            "temp2_input": "38850",
            "temp2_max": "65261850",
            "temp2_min": "-273150",
        },
    )
    bus_device(root, "LNXSYSTM:00/device:00/ACPI000D:00", "acpi")
    hwmon(root, 4, "LNXSYSTM:00/device:00/ACPI000D:00", "power_meter", {"power1_average": "212000000"})
    for index in (0, 1):
        base = mc(root, index, f"Skylake Socket#{index} IMC#0", (3 if index == 0 else 0, 0, 0, 0), 131072)
        for d in range(4):
            ce = 3 if (index, d) == (0, 1) else 0
            dimm(base, "dimm", d, f"CPU_SrcID#{index}_MC#0_Chan#{d}_DIMM#0", ce, 0, f"channel {d} slot 0 ")


def amd_server(root: Path) -> None:
    """EPYC: k10temp on PCI, an nct6779 super-I/O on ISA, amd64_edac with legacy csrows and rankN."""
    bus_device(root, "pci0000:00/0000:00:18.3", "pci")
    hwmon(
        root,
        0,
        "pci0000:00/0000:00:18.3",
        "k10temp",
        {
            "temp1_label": "Tctl",
            "temp1_input": "52375",
            "temp3_label": "Tccd1",
            "temp3_input": "47250",
            "temp4_label": "Tccd2",
            "temp4_input": "46500",
        },
    )
    bus_device(root, "platform/nct6775.656", "platform")
    hwmon(
        root,
        1,
        "platform/nct6775.656",
        "nct6779",
        {
            "temp1_label": "SYSTIN",
            "temp1_input": "34000",
            "temp1_max": "80000",
            "temp1_max_hyst": "75000",
            "temp1_type": "4",
            "temp2_label": "CPUTIN",
            "temp2_input": "41500",
            "temp2_max": "80000",
            "temp2_max_hyst": "75000",
            "temp2_crit": "105000",
            "temp2_emergency": "110000",
            "temp2_crit_hyst": "100000",
            "temp7_label": "PECI Agent 0",
            "temp7_input": "52000",
            "temp10_label": "AUXTIN1",
            "temp10_input": "-62000",
            "temp10_fault": "1",
        },
    )
    for index in (0, 1):
        base = mc(root, index, "F17h", (7 if index == 1 else 0, 1 if index == 1 else 0, 0, 0), 65536)
        for row in range(2):
            ce = (0, 0) if index == 0 else ((5, 2) if row == 0 else (0, 0))
            ue = 1 if (index, row) == (1, 0) else 0
            csrow(base, row, [(ce[0], f"P{index}_DIMM_A{row}"), (ce[1], f"P{index}_DIMM_B{row}")], ue)
            for ch in range(2):
                dimm(
                    base,
                    "rank",
                    row * 2 + ch,
                    f"mc#{index}csrow#{row}channel#{ch}",
                    ce[ch],
                    ue if ch == 0 else 0,
                    f"csrow {row} channel {ch} ",
                )


def faulty_server(root: Path) -> None:
    """Broken drivers: garbage, empty, a `_fault` channel, a vanished chip, a chip that has only `name`."""
    bus_device(root, "platform/coretemp.0", "platform")
    hwmon(
        root,
        0,
        "platform/coretemp.0",
        "coretemp",
        {
            "temp1_label": "Package id 0",
            "temp1_input": "51000",
            "temp2_label": "Core 0",
            "temp2_input": "garbage",
            "temp3_label": "Core 1",
            "temp3_input": "",
            "temp4_label": "Core 2",
            "temp4_input": "49000",
            "temp4_max": "not-a-number",
        },
    )
    (root / "devices/platform/coretemp.0/hwmon/hwmon0/temp3_input").write_text("")
    link(root / "class" / "hwmon" / "hwmon1", "../../devices/platform/it87.2608/hwmon/hwmon1")
    class_device(root, "virtual/hwmon/hwmon2", "hwmon")
    write(root / "devices/virtual/hwmon/hwmon2/name", "dell_smm\n")
    write(root / "devices/virtual/hwmon/hwmon2/temp1_input", "33000\n")
    link(root / "class" / "hwmon" / "hwmon2", "../../devices/virtual/hwmon/hwmon2")
    base = mc(root, 0, "ie31200", (2, 0, 0, 0), 16384)
    write(base / "ue_count", "lots\n")
    dimm(base, "dimm", 0, "DIMM_A1", 2, 0, "channel 0 slot 0 ")


TREES = {"intel-2s": intel_server, "amd-epyc": amd_server, "faulty": faulty_server}


def main() -> None:
    for name, build in TREES.items():
        root = HERE / name
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        build(root)


if __name__ == "__main__":
    main()
