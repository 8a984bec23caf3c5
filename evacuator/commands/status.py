"""`evacuator status [--cloud] [--json]`: this host as its daemon sees it now, from its state directory alone
(so it answers while the broker is down): the latest verdict with its reasons and readings and how old it
is, quarantine and maintenance, the open incident, every VM still to move (tenant, window's end, state), the
moves under way with their step and destination, and the admin's requests not yet taken. `--cloud` adds, from
the broker, the other hosts in brief (verdicts, who evacuates) and whether evacuations are paused.
Exit 0; 1 when the daemon wrote no verdict for three poll intervals (stopped, or its loop hangs).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evacuator.incident.admin import AdminStore
from evacuator.incident.ledger import IncidentLedger
from evacuator.incident.status_file import read_status
from evacuator.moves.journal import Journal
from evacuator.moves.state import TERMINAL
from evacuator.settings import Settings, load_settings
from evacuator.wiring.host_view import guard_state_for, listener_for


def _now() -> datetime:
    return datetime.now(UTC)


def collect(settings: Settings, now: datetime) -> dict[str, Any]:
    """Everything `status` shows of this host, as one JSON-ready object (README, "Status")."""
    state = settings.state_dir
    last = read_status(state)
    stale_after = 3 * settings.monitors.poll_interval_seconds
    daemon: dict[str, Any] = {"running": False, "pid": None, "verdict_age_seconds": None}
    verdict: dict[str, Any] | None = None
    if last is not None:
        age = (now - last.at).total_seconds()
        daemon = {"running": age <= stale_after and _alive(last.pid), "pid": last.pid,
                  "verdict_age_seconds": round(age, 1)}  # fmt: skip
        verdict = {"severity": last.severity, "at": last.at.isoformat(), "reasons": last.reasons,
                   "quarantined": last.severity != "healthy" and last.severity != "unknown",
                   "awaiting_approval": last.awaiting_approval}  # fmt: skip
    with AdminStore(state / "admin.sqlite") as admin:
        maintenance = admin.maintenance()
        waiting_requests = [{"request_id": r.request_id, "action": r.action, "reason": r.reason,
                             "requested_at": r.requested_at.isoformat()}
                            for r in admin.untaken()]  # fmt: skip
    with IncidentLedger(state / "incident.sqlite") as ledger, Journal(state / "journal.sqlite") as journal:
        incident = ledger.open_incident()
        records = ledger.records(incident.incident_id) if incident is not None else ()
        moves = {m.vm_uuid: m for m in journal.all()}
    pending = []
    for vm in records:
        move = moves.get(vm.vm_uuid)
        pending.append({
            "vm_uuid": vm.vm_uuid, "vm_name": vm.vm_name, "tenant": vm.tenant,
            "deadline": vm.deadline.isoformat(),
            "seconds_left": max(0, round((vm.deadline - now).total_seconds())), "outcome": vm.outcome,
            "state": None if move is None else str(move.state), "step": None if move is None else move.step,
            "destination": None if move is None else move.destination,
        })  # fmt: skip
    moving = [{"vm_uuid": m.vm_uuid, "vm_name": m.vm_name, "tenant": m.tenant, "state": str(m.state),
               "step": m.step, "destination": m.destination, "since": m.updated_at.isoformat()}
              for m in moves.values() if m.state not in TERMINAL and m.step is not None]  # fmt: skip
    return {
        "host": settings.host.name, "at": now.isoformat(), "daemon": daemon, "verdict": verdict,
        "maintenance": None if maintenance is None else {"reason": maintenance.reason,
                                                         "since": maintenance.since.isoformat()},
        "incident": None if incident is None else {
            "incident_id": incident.incident_id, "severity": "maintenance" if incident.planned
            else str(incident.severity), "opened_at": incident.opened_at.isoformat(),
            "reasons": [r.message for r in incident.reasons],
        },
        "vms": pending, "moving": moving, "max_outgoing_moves": settings.evacuation.max_outgoing_moves,
        "requests_waiting": waiting_requests,
    }  # fmt: skip


def cloud(settings: Settings, *, listen_seconds: float,
          clock: Callable[[], datetime] = _now) -> dict[str, Any]:  # fmt: skip
    """The other hosts in brief, as this host hears them on the broker, and the cloud-wide pause."""
    subscriber = listener_for(settings, clock=clock)
    subscriber.start()
    try:
        subscriber.view.wait_for([settings.host.name, *(p.name for p in settings.peers)], listen_seconds)
    finally:
        subscriber.close()
    heard = subscriber.view.heard()
    hosts = subscriber.view.hosts(clock())
    pause = guard_state_for(settings, "status").paused()
    return {
        "hosts_heard": len(hosts), "verdicts": dict(Counter(str(h.verdict) for h in hosts)),
        "evacuating": sorted(h.host for h in heard if h.evacuating_since is not None),
        "paused": None if pause is None else {"by": pause.by, "at": pause.at, "reason": pause.reason},
    }  # fmt: skip


def render(found: dict[str, Any]) -> str:
    daemon, verdict = found["daemon"], found["verdict"]
    lines = []
    if verdict is None:
        lines.append(f"{found['host']}: no verdict yet (the daemon has not polled here: is it running?)")
    else:
        state = "running" if daemon["running"] else "NOT RUNNING (no fresh verdict)"
        lines.append(f"{found['host']}: {verdict['severity']}, verdict {daemon['verdict_age_seconds']} s "
                     f"old; daemon {state} (pid {daemon['pid']})")  # fmt: skip
        lines += [f"  why: {r['message']}" for r in verdict["reasons"]]
    flags = [f"maintenance since {found['maintenance']['since']}: {found['maintenance']['reason']}"
             if found["maintenance"] else None, "quarantined" if verdict and verdict["quarantined"] else None]
    lines += [f"  {flag}" for flag in flags if flag]
    if verdict and verdict.get("awaiting_approval"):
        waiting = verdict["awaiting_approval"]
        lines.append(f"  AWAITING APPROVAL since {waiting['since']}: a {waiting['severity']} evacuation; "
                     "`evacuator approve` lets it begin, `evacuator reject` keeps the host quarantined")
    incident = found["incident"]
    if incident is None:
        lines.append("no open incident")
    else:
        lines.append(f"incident {incident['incident_id']} {incident['severity']}, opened "
                     f"{incident['opened_at']}: {'; '.join(incident['reasons'])}")  # fmt: skip
        header = ("VM", "TENANT", "LEFT", "STATE", "STEP", "TO", "OUTCOME")
        table = [header, *((vm["vm_name"], vm["tenant"] or "-", f"{vm['seconds_left']}s", vm["state"] or "-",
                            vm["step"] or "-", vm["destination"] or "-", vm["outcome"] or "-")
                           for vm in found["vms"])]  # fmt: skip
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                  for row in table]  # fmt: skip
    lines.append(f"moves under way: {len(found['moving'])} "
                 f"(at most {found['max_outgoing_moves']} copy at once)")  # fmt: skip
    lines += [f"  {m['vm_name']}: {m['state']}, step {m['step']}, to {m['destination']}"
              for m in found["moving"]]  # fmt: skip
    lines += [f"request {r['request_id']} ({r['action']}) not taken yet" for r in found["requests_waiting"]]
    if "cloud" in found:
        seen = found["cloud"]
        verdicts = ", ".join(f"{count} {name}" for name, count in sorted(seen["verdicts"].items()))
        lines.append(f"cloud: {seen['hosts_heard']} hosts heard ({verdicts}); evacuating: "
                     f"{', '.join(seen['evacuating']) or 'none'}; "
                     + ("PAUSED by " + seen["paused"]["by"] + ": " + seen["paused"]["reason"]
                        if seen["paused"] else "not paused"))  # fmt: skip
    return "\n".join(lines)


def run_status(settings: Settings, *, with_cloud: bool, as_json: bool) -> int:
    found = collect(settings, _now())
    if with_cloud:
        found["cloud"] = cloud(settings, listen_seconds=settings.host_view.interval_seconds + 1)
    print(json.dumps(found, indent=2) if as_json else render(found))
    return 0 if found["daemon"]["running"] else 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, as another user
        return True
    return True


def main(args: argparse.Namespace) -> int:
    return run_status(load_settings(Path(args.config)), with_cloud=args.cloud, as_json=args.json)
