"""Hand-written fakes for the monitors tests: a sysfs file reader that can inject kernel read errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from monitors.hwmon import read_bounded


class FakeSysfsReader:
    """Reads the real fixture file unless an errno was injected for a path ending in that suffix."""

    def __init__(self) -> None:
        self.calls: list[Path] = []
        self._errors: dict[str, int] = {}

    def inject_error(self, path_suffix: str, code: int) -> None:
        self._errors[path_suffix] = code

    def __call__(self, path: Path) -> bytes:
        self.calls.append(path)
        for suffix, code in self._errors.items():
            if str(path).endswith(suffix):
                raise OSError(code, os.strerror(code), str(path))
        return read_bounded(path)


ENODATA = errno.ENODATA
EIO = errno.EIO
EAGAIN = errno.EAGAIN
