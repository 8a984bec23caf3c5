"""A hwmon sysfs tree in the exact kernel layout whose temperature the demo and the tests can raise."""

from __future__ import annotations

import os
from pathlib import Path


class HeatableHwmon:
    """One coretemp chip under `root` (which stands for /sys): class/hwmon/hwmonN links into devices/."""

    def __init__(self, root: Path, *, hwmon: str = "hwmon3", celsius: float = 45.0) -> None:
        self.root = root
        device = root / "devices/platform/coretemp.0"
        self._dir = device / "hwmon" / hwmon
        self._dir.mkdir(parents=True, exist_ok=True)
        (root / "class/hwmon").mkdir(parents=True, exist_ok=True)
        link = root / "class/hwmon" / hwmon
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(self._dir, link.parent))
        device_link = self._dir / "device"
        if not device_link.is_symlink():
            device_link.symlink_to(os.path.relpath(device, self._dir))
        self._write("name", "coretemp")
        self._write("temp1_label", "Package id 0")
        self._write("temp1_max", "100000")
        self._write("temp1_crit", "105000")
        self._write("temp2_label", "Core 0")
        self._write("temp2_max", "100000")
        self._write("temp2_crit", "105000")
        self._write("temp2_input", "44000")
        self.set_celsius(celsius)

    def set_celsius(self, celsius: float) -> None:
        """The package temperature; written whole (rename) so a reader never sees half a number."""
        self._write("temp1_input", str(round(celsius * 1000)))

    def _write(self, name: str, text: str) -> None:
        tmp = self._dir / f".{name}.tmp"
        tmp.write_text(text + "\n", encoding="ascii")
        tmp.replace(self._dir / name)
