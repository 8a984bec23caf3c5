"""`evacuator approve` / `evacuator reject`: the admin's answer to an evacuation awaiting approval (settings
evacuation.approval_severe / approval_failed: manual; `evacuator status` shows it waiting). The answer goes to
the daemon as a request it takes at its next poll (incident/admin.py). Exit 0 when the daemon took it, 1 when
it refused (nothing awaits approval) or did not take it in time (is it running?).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Literal

from evacuator.commands.drain import request, wait_taken
from evacuator.settings import Settings, load_settings


def run_answer(settings: Settings, action: Literal["approve", "reject"], *, reason: str,
               as_json: bool = False) -> int:  # fmt: skip
    request_id = request(settings, action, reason=reason, window_seconds=None)
    taken = wait_taken(settings, request_id)
    outcome = "not taken: the daemon did not take the request (is it running?)" if taken is None \
        else str(taken.outcome)  # fmt: skip
    accepted = outcome.startswith("accepted")
    if as_json:
        print(json.dumps({"request_id": request_id, "action": action, "accepted": accepted,
                          "outcome": outcome}))
    elif accepted:
        print(f"{settings.host.name}: {action}d ({outcome.removeprefix('accepted: ')})")
    else:
        print(f"evacuator: {action}: {outcome}", file=sys.stderr)
    return 0 if accepted else 1


def main_approve(args: argparse.Namespace) -> int:
    return run_answer(load_settings(Path(args.config)), "approve", reason=args.reason, as_json=args.json)


def main_reject(args: argparse.Namespace) -> int:
    return run_answer(load_settings(Path(args.config)), "reject", reason=args.reason, as_json=args.json)
