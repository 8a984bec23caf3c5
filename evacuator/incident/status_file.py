"""This host's latest verdict as the daemon last saw it, in `<state_dir>/status.json`, for `evacuator status`.

Written by the daemon after every poll (a temporary file renamed over the old one: a reader never sees half
a file), read by the command without the broker, so it answers while the broker is down. `at` says how old
the verdict is: a file much older than the poll interval means the daemon stopped or its loop hangs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from evacuator.incident.approval import Proposal
from monitors.verdicts import HostVerdict

STATUS_FILE = "status.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class LastVerdict:
    severity: str
    reasons: list[dict[str, Any]]
    at: datetime
    pid: int
    awaiting_approval: dict[str, str] | None = None  # severity, since: an evacuation waiting for the admin


def write_status(state_dir: Path, verdict: HostVerdict, *, pid: int | None = None,
                 awaiting: Proposal | None = None) -> None:  # fmt: skip
    """The daemon's latest verdict (and an evacuation awaiting approval), replacing the previous file
    atomically."""
    data = {
        "awaiting_approval": None if awaiting is None else {"severity": str(awaiting.severity),
                                                            "since": awaiting.since.isoformat()},
        "severity": str(verdict.severity), "at": verdict.at.isoformat(), "pid": pid or os.getpid(),
        "reasons": [{"source": r.source, "sensor": r.sensor, "value": r.value, "threshold": r.threshold,
                     "unit": r.unit, "severity": str(r.severity), "message": r.message}
                    for r in verdict.reasons],
    }  # fmt: skip
    path = state_dir / STATUS_FILE
    temporary = path.with_name(f".{STATUS_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, path)


def read_status(state_dir: Path) -> LastVerdict | None:
    """The latest verdict the daemon wrote; None if it never did (or the file is unreadable)."""
    try:
        data = json.loads((state_dir / STATUS_FILE).read_text(encoding="utf-8"))
        return LastVerdict(severity=str(data["severity"]), reasons=list(data["reasons"]),
                           at=datetime.fromisoformat(data["at"]), pid=int(data["pid"]),
                           awaiting_approval=data.get("awaiting_approval"))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None
