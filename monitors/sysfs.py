"""Bounded, injectable reads of sysfs attribute files, shared by the hwmon and EDAC readers."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path

FileReader = Callable[[Path], bytes]
"""Reads one sysfs attribute file; raises OSError as the kernel would (ENODATA, EIO, EAGAIN...)."""

MAX_ATTRIBUTE_BYTES = 4096


class Unreadable(Exception):
    """One attribute file could not be used; the message is the fault reason."""


def read_bounded(path: Path) -> bytes:
    """Read a sysfs attribute with exactly one bounded read: some drivers answer EAGAIN forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, MAX_ATTRIBUTE_BYTES)
    finally:
        os.close(fd)


def optional_text(path: Path, reader: FileReader) -> str | None:
    """A label-like file: absent, unreadable or blank all mean None."""
    try:
        return reader(path).decode("utf-8", errors="replace").strip() or None
    except OSError:
        return None


def read_int(path: Path, reader: FileReader) -> int:
    """A required integer attribute; raises Unreadable with the reason a fault should carry."""
    try:
        raw = reader(path)
    except FileNotFoundError:
        raise Unreadable("file vanished") from None
    except OSError as exc:
        raise Unreadable(errno_reason(exc)) from exc
    try:
        return int(raw)  # int() takes ASCII bytes and ignores the trailing newline
    except ValueError:
        pass
    text = raw.decode("ascii", errors="replace").strip()
    if not text:
        raise Unreadable("empty file")
    raise Unreadable(f"not an integer: {text[:32]!r}")


def errno_reason(exc: OSError) -> str:
    if exc.errno == errno.ENODATA:
        return "channel disabled (ENODATA)"
    if exc.errno is not None and exc.errno in errno.errorcode:
        return f"read failed ({errno.errorcode[exc.errno]})"
    return f"read failed ({exc})"


def natural_key(path: Path) -> tuple[str, int]:
    """Sort `hwmon10` after `hwmon9`."""
    match = re.match(r"^(\D*)(\d+)$", path.name)
    return (match.group(1), int(match.group(2))) if match else (path.name, -1)
