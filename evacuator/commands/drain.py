"""`evacuator drain` / `evacuator undrain`: planned maintenance of this host through the tenant contract.

`drain` asks the daemon (incident/admin.py: a request it takes at its next poll) to move every VM off this
healthy host as it would off a sick one: each tenant gets evacuation_scheduled with severity `maintenance`
and the admin's reason, each VM waits out its window (`--window` for a VM that registered none) unless its
tenant answers ready or postpones, then moves; the host says it is in maintenance on the host view, so no VM
is placed on it, until `undrain`. `--wait` follows the drain to its end: a live table per VM on a terminal
(rich), one line per change otherwise. Exit codes: 0 requested (with --wait: every VM moved), 1 refused, not
taken by the daemon in time (is it running?), or a VM that did not move.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from evacuator.incident.admin import Action, AdminRequest, AdminStore
from evacuator.incident.ledger import IncidentLedger
from evacuator.moves.journal import Journal
from evacuator.settings import Settings, load_settings

_TAKE_MARGIN_SECONDS = 30.0  # past a few polls: a daemon that takes nothing by then is not running


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class VmRow:
    vm: str
    tenant: str
    deadline: str
    state: str
    step: str
    destination: str
    outcome: str


def request(settings: Settings, action: Action, *, reason: str, window_seconds: int | None) -> int:
    with AdminStore(settings.state_dir / "admin.sqlite") as admin:
        return admin.request(action, reason=reason, window_seconds=window_seconds, now=_now())


def wait_taken(settings: Settings, request_id: int, *, sleep: Callable[[float], None] = time.sleep
               ) -> AdminRequest | None:  # fmt: skip
    """The request once the daemon took it; None if it did not within a few polls."""
    deadline = time.monotonic() + 3 * settings.monitors.poll_interval_seconds + _TAKE_MARGIN_SECONDS
    with AdminStore(settings.state_dir / "admin.sqlite") as admin:
        while time.monotonic() < deadline:
            taken = admin.get(request_id)
            if taken is not None and taken.taken_at is not None:
                return taken
            sleep(0.5)
    return None


def rows(settings: Settings, incident_id: str) -> list[VmRow]:
    """Each VM of the drain's incident: what its tenant was told and where its move stands."""
    state = settings.state_dir
    with IncidentLedger(state / "incident.sqlite") as ledger, Journal(state / "journal.sqlite") as journal:
        found = []
        for vm in ledger.records(incident_id):
            move = journal.get(vm.vm_uuid)
            found.append(VmRow(vm=vm.vm_name, tenant=vm.tenant or "-", deadline=vm.deadline.isoformat(),
                               state="-" if move is None else str(move.state),
                               step="-" if move is None or move.step is None else move.step,
                               destination=(move.destination if move is not None and move.destination
                                            else "-"),
                               outcome=vm.outcome or "-"))  # fmt: skip
    return found


def _table(found: list[VmRow], title: str) -> Table:
    table = Table(title=title)
    for column in ("VM", "tenant", "window ends", "state", "step", "to", "outcome"):
        table.add_column(column)
    for row in found:
        table.add_row(row.vm, row.tenant, row.deadline[11:19], row.state, row.step, row.destination,
                      row.outcome)
    return table


def follow(settings: Settings, incident_id: str, *, as_json: bool, poll_seconds: float = 1.0) -> list[VmRow]:
    """Until every VM of the incident has an outcome: a live table on a terminal, a line per change else."""
    console = Console()
    found = rows(settings, incident_id)
    title = f"drain of {settings.host.name} (incident {incident_id})"
    if console.is_terminal and not as_json:
        with Live(_table(found, title), console=console, refresh_per_second=4) as live:
            while any(row.outcome == "-" for row in found):
                time.sleep(poll_seconds)
                found = rows(settings, incident_id)
                live.update(_table(found, title))
        return found
    seen: dict[str, VmRow] = {}
    while True:
        for row in found:
            if seen.get(row.vm) != row and not as_json:
                print(f"{_now().isoformat(timespec='seconds')} {row.vm} ({row.tenant}): {row.state}"
                      + (f", step {row.step}" if row.step != "-" else "")
                      + (f", to {row.destination}" if row.destination != "-" else "")
                      + (f", {row.outcome}" if row.outcome != "-" else ""), flush=True)  # fmt: skip
            seen[row.vm] = row
        if all(row.outcome != "-" for row in found):
            return found
        time.sleep(poll_seconds)
        found = rows(settings, incident_id)


def run_drain(settings: Settings, *, reason: str, window_seconds: int | None, wait: bool,
              as_json: bool = False) -> int:  # fmt: skip
    request_id = request(settings, "drain", reason=reason, window_seconds=window_seconds)
    if not wait:
        _say(as_json, {"request_id": request_id, "requested": True},
             f"drain of {settings.host.name} requested (request {request_id}); the daemon takes it at its "
             "next poll (evacuator drain --wait follows it)")  # fmt: skip
        return 0
    taken = wait_taken(settings, request_id)
    if taken is None:
        return _fail(as_json, request_id, "the daemon did not take the request: is it running? "
                                          "(systemctl status evacuator)")  # fmt: skip
    if taken.outcome != "accepted" or taken.incident_id is None:
        return _fail(as_json, request_id, str(taken.outcome))
    found = follow(settings, taken.incident_id, as_json=as_json)
    moved = all(row.outcome == "moved" for row in found)
    if as_json:
        print(json.dumps({"request_id": request_id, "incident_id": taken.incident_id, "moved": moved,
                          "vms": [asdict(row) for row in found]}))  # fmt: skip
    else:
        Console().print(_table(found, f"drain of {settings.host.name}: "
                                      f"{sum(r.outcome == 'moved' for r in found)} of {len(found)} moved"))
        print(f"{settings.host.name} stays in maintenance until `evacuator undrain`")
    return 0 if moved else 1


def run_undrain(settings: Settings, *, as_json: bool = False) -> int:
    request_id = request(settings, "undrain", reason="undrain", window_seconds=None)
    taken = wait_taken(settings, request_id)
    if taken is None:
        return _fail(as_json, request_id, "the daemon did not take the request: is it running? "
                                          "(systemctl status evacuator)")  # fmt: skip
    if taken.outcome != "accepted":
        return _fail(as_json, request_id, str(taken.outcome))
    _say(as_json, {"request_id": request_id, "in_service": True},
         f"{settings.host.name} is back in service: it takes VMs again")
    return 0


def _say(as_json: bool, data: dict[str, object], text: str) -> None:
    print(json.dumps(data) if as_json else text)


def _fail(as_json: bool, request_id: int, why: str) -> int:
    if as_json:
        print(json.dumps({"request_id": request_id, "refused": why}))
    else:
        print(f"evacuator: request {request_id}: {why}", file=sys.stderr)
    return 1


def main_drain(args: argparse.Namespace) -> int:
    return run_drain(load_settings(Path(args.config)), reason=args.reason, window_seconds=args.window,
                     wait=args.wait, as_json=args.json)


def main_undrain(args: argparse.Namespace) -> int:
    return run_undrain(load_settings(Path(args.config)), as_json=args.json)
