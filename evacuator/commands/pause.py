"""`evacuator pause` / `evacuator resume`: the admin's cloud-wide switch for every host's evacuations
(README, "Guard rails"). Paused, no host starts a new move (a move under way finishes); each daemon looks
before every move it starts, so a pause takes hold within `guards.poll_seconds`. The pause lives on the
broker (peers/guard_broker.py), so it holds for daemons that start later too, until `resume`.
`evacuator pause --status` only says whether evacuations are paused. Exit 0; 1 when the broker cannot be
reached (nothing changed then).
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
from datetime import UTC, datetime
from pathlib import Path

from evacuator.settings import Settings, load_settings
from evacuator.wiring.host_view import guard_state_for


def run_pause(settings: Settings, *, reason: str, as_json: bool = False) -> int:
    state = guard_state_for(settings, "pause")
    by = f"{getpass.getuser()}@{socket.gethostname()} (host {settings.host.name})"
    state.pause(by=by, at=datetime.now(UTC), reason=reason)
    _print({"paused": True, "by": by, "reason": reason}, as_json,
           f"evacuations paused cloud-wide by {by}: {reason}\n(no host starts a new move until "
           "`evacuator resume`; moves under way finish)")  # fmt: skip
    return 0


def run_resume(settings: Settings, *, as_json: bool = False) -> int:
    lifted = guard_state_for(settings, "pause").resume()
    _print({"paused": False, "was_paused": lifted}, as_json,
           "evacuations resumed cloud-wide" if lifted else "evacuations were not paused")
    return 0


def run_status(settings: Settings, *, as_json: bool = False) -> int:
    pause = guard_state_for(settings, "pause").paused()
    if pause is None:
        _print({"paused": False}, as_json, "evacuations are not paused")
    else:
        _print({"paused": True, "by": pause.by, "at": pause.at, "reason": pause.reason}, as_json,
               f"evacuations are paused cloud-wide since {pause.at} by {pause.by}: {pause.reason}")
    return 0


def _print(data: dict[str, object], as_json: bool, text: str) -> None:
    print(json.dumps(data) if as_json else text)


def main_pause(args: argparse.Namespace) -> int:
    settings = load_settings(Path(args.config))
    if args.status:
        return run_status(settings, as_json=args.json)
    return run_pause(settings, reason=args.reason, as_json=args.json)


def main_resume(args: argparse.Namespace) -> int:
    return run_resume(load_settings(Path(args.config)), as_json=args.json)
