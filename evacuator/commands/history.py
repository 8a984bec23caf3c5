"""`evacuator history`: this host's incidents and the moves they made, from its move journal and incident
ledger, read-only (safe while the daemon writes them), as a table or one JSON object (README, "History").

A move is one pass of a VM through the journal, from being planned to an ending (done, restored_on_source,
failed, cancelled): a VM moved away, back and away again has two. Its incident is the latest one that planned
the VM and opened before the move did; a move the `evacuator move` command made has none.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from evacuator.errors import JournalError
from evacuator.moves.journal import HistoryEntry, JournalContents, downtime_seconds, read_journal
from evacuator.moves.state import TERMINAL, MoveRecord, Phase
from evacuator.settings import Settings, load_settings

SCHEMA_VERSION = 1
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_REASON_KEYS = ("source", "sensor", "value", "threshold", "unit", "severity", "message")


def parse_since(text: str) -> datetime | timedelta:
    """`--since`: a duration back from now (`90m`, `24h`, `7d`) or an ISO 8601 time (UTC unless it says)."""
    if match := _DURATION.fullmatch(text.strip()):
        return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 24h, 7d) nor an ISO time (2026-12-01T08:00:00+00:00)"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentRow:
    """One incident as the ledger holds it; its JSON form is this (README, "History")."""

    incident_id: str
    severity: str
    opened_at: datetime
    closed_at: datetime | None  # None while it is open
    reasons: list[dict[str, Any]]  # the verdict's reasons: _REASON_KEYS
    vm_uuids: list[str]  # the VMs it planned to move


@dataclass(frozen=True, slots=True, kw_only=True)
class MoveRow:
    """One move of one VM; its JSON form is this (README, "History")."""

    vm_uuid: str
    vm_name: str
    tenant: str | None
    incident_id: str | None  # None: not an incident's (the `evacuator move` command)
    why: str | None  # the incident's severity and reasons, in words
    source: str
    destination: str | None  # where it went, or the last host it was headed for
    destinations_tried: list[str]
    method: str | None  # cold or live, as its steps show; None before any step
    outcome: str  # done, restored_on_source, failed, cancelled; in_progress until it ends
    state: str  # the journal's latest state for it (the outcome once ended)
    error: str | None
    planned_at: datetime
    started_at: datetime | None  # its first step
    ended_at: datetime | None
    duration_seconds: float | None  # first step to ending
    bytes_copied: int | None  # disk bytes written to the destination (a done cold move)
    downtime_seconds: float | None  # guest off (quiesce finished) to running there (start finished)


def read_incidents(path: Path) -> list[IncidentRow]:
    """Every incident of the ledger (evacuator/incident/ledger.py), read-only; none without a ledger."""
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN")  # one snapshot of both tables
            found = db.execute("SELECT incident_id, severity, reasons, opened_at, closed_at FROM incidents "
                               "ORDER BY opened_at, incident_id").fetchall()  # fmt: skip
            planned = db.execute("SELECT incident_id, vm_uuid FROM scheduled_vms ORDER BY vm_name, vm_uuid")
            vms: dict[str, list[str]] = {}
            for incident_id, vm_uuid in planned.fetchall():
                vms.setdefault(incident_id, []).append(vm_uuid)
            db.execute("COMMIT")
        finally:
            db.close()
        return [_incident(row, vms) for row in found]
    except (sqlite3.Error, ValueError) as exc:
        raise JournalError(f"{path}: cannot read the incident ledger: {exc}") from exc


def _incident(row: tuple[Any, ...], vms: dict[str, list[str]]) -> IncidentRow:
    incident_id, severity, reasons, opened, closed = row
    return IncidentRow(
        incident_id=incident_id, severity=severity, opened_at=datetime.fromisoformat(opened),
        closed_at=None if closed is None else datetime.fromisoformat(closed),
        reasons=[{key: reason.get(key) for key in _REASON_KEYS} for reason in json.loads(reasons)],
        vm_uuids=vms.get(incident_id, []),
    )


def passes(entries: Sequence[HistoryEntry]) -> list[list[HistoryEntry]]:
    """The journal's history cut into moves: a VM's next move begins with its first write after an ending."""
    moves: dict[str, list[list[HistoryEntry]]] = {}
    for entry in entries:
        mine = moves.setdefault(entry.vm_uuid, [])
        if not mine or (mine[-1][-1].state in TERMINAL and entry.state not in TERMINAL):
            mine.append([])
        mine[-1].append(entry)
    return [move for mine in moves.values() for move in mine]


def move_rows(journal: JournalContents, incidents: Sequence[IncidentRow]) -> list[MoveRow]:
    records = {record.vm_uuid: record for record in journal.records}
    cut = passes(journal.entries)
    latest = {move[0].vm_uuid: move for move in cut}  # dicts keep the last: each VM's newest move
    rows = [_move_row(move, records.get(move[0].vm_uuid), move is latest[move[0].vm_uuid], incidents)
            for move in cut]  # fmt: skip
    return sorted(rows, key=lambda row: (row.planned_at, row.vm_name, row.vm_uuid))


def _move_row(entries: list[HistoryEntry], record: MoveRecord | None, newest: bool,
              incidents: Sequence[IncidentRow]) -> MoveRow:  # fmt: skip
    first, last = entries[0], entries[-1]
    ended = last.state in TERMINAL
    started = next((e.at for e in entries if e.phase is Phase.STARTED and e.step is not None), None)
    tried = list(dict.fromkeys(e.destination for e in entries if e.destination))
    runs = [e.start_on_destination for e in entries if e.start_on_destination is not None]
    start_on_destination = runs[-1] if runs else (record.start_on_destination if newest and record else None)
    # The same measure as the tenant's vm_evacuated notice carries.
    downtime = downtime_seconds(entries, start_on_destination=start_on_destination)
    steps = {e.step for e in entries}
    incident = _incident_of(first, incidents)
    return MoveRow(
        vm_uuid=first.vm_uuid, vm_name=record.vm_name if record else first.vm_uuid,
        tenant=record.tenant if record else None,
        incident_id=incident.incident_id if incident else None, why=_why(incident) if incident else None,
        source=record.source if record else "", destination=tried[-1] if tried else None,
        destinations_tried=tried,
        method="cold" if "quiesce" in steps else "live" if "copy_disks" in steps else None,
        outcome=str(last.state) if ended else "in_progress", state=str(last.state),
        error=last.error, planned_at=first.at, started_at=started, ended_at=last.at if ended else None,
        duration_seconds=(last.at - started).total_seconds() if ended and started else None,
        bytes_copied=last.bytes_copied if ended else None, downtime_seconds=downtime,
    )  # fmt: skip


def _incident_of(first: HistoryEntry, incidents: Sequence[IncidentRow]) -> IncidentRow | None:
    mine = [i for i in incidents if first.vm_uuid in i.vm_uuids and i.opened_at <= first.at]
    return max(mine, key=lambda i: i.opened_at, default=None)


def _why(incident: IncidentRow) -> str:
    messages = [str(r["message"]) for r in incident.reasons if r.get("message")]
    return f"{incident.severity}: {'; '.join(messages)}" if messages else incident.severity


def history(state_dir: Path, since: datetime | None) -> tuple[list[IncidentRow], list[MoveRow]]:
    """The incidents and moves to show: the moves not ended, or ended at or after `since`; the incidents
    still open, opened or closed since, or one of those moves belongs to."""
    journal_path = state_dir / "journal.sqlite"
    incidents = read_incidents(state_dir / "incident.sqlite")
    journal = read_journal(journal_path) if journal_path.exists() else JournalContents(records=(), entries=())
    moves = [m for m in move_rows(journal, incidents)
             if since is None or m.ended_at is None or m.ended_at >= since]  # fmt: skip
    used = {m.incident_id for m in moves}
    shown = [i for i in incidents if since is None or i.incident_id in used or i.closed_at is None
             or i.opened_at >= since or i.closed_at >= since]  # fmt: skip
    return shown, moves


def as_json(host: str, since: datetime | None, incidents: Sequence[IncidentRow], moves: Sequence[MoveRow],
            ) -> dict[str, Any]:  # fmt: skip
    return {"schema_version": SCHEMA_VERSION, "host": host, "since": _iso(since),
            "incidents": [_plain(asdict(i)) for i in incidents], "moves": [_plain(asdict(m)) for m in moves]}


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {key: _iso(value) if isinstance(value, datetime) else value for key, value in row.items()}


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


_HEADER = ("WHEN (UTC)", "VM", "TENANT", "FROM", "TO", "METHOD", "OUTCOME", "DURATION", "COPIED", "DOWNTIME")


def format_history(host: str, since: datetime | None, incidents: Sequence[IncidentRow],
                   moves: Sequence[MoveRow]) -> str:  # fmt: skip
    if not incidents and not moves:
        return f"no incident and no move journaled on {host}" + (f" since {_when(since)}" if since else "")
    cells = {id(m): _cells(m) for m in moves}
    widths = [max(len(line[i]) for line in [_HEADER, *cells.values()]) for i in range(len(_HEADER))]

    def table(group: Sequence[MoveRow]) -> list[str]:
        lines = []
        for line in [_HEADER, *(cells[id(m)] for m in group)]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        lines += [f"  {m.vm_name}: {m.error}" for m in group if m.error and m.outcome != "done"]
        return lines

    out: list[str] = []
    for incident in incidents:
        closed = f"closed {_when(incident.closed_at)}" if incident.closed_at else "open"
        out += [f"incident {incident.incident_id} {incident.severity}, opened {_when(incident.opened_at)}, "
                f"{closed}", f"  why: {_why(incident)}"]  # fmt: skip
        mine = [m for m in moves if m.incident_id == incident.incident_id]
        out += table(mine) if mine else [f"  (no move{f' since {_when(since)}' if since else ''})"]
    orphans = [m for m in moves if m.incident_id is None]
    if orphans:
        out += ["moves of no incident (evacuator move)", *table(orphans)]
    return "\n".join(out)


def _cells(m: MoveRow) -> tuple[str, ...]:
    outcome = m.outcome if m.outcome != "in_progress" else f"in progress ({m.state})"
    return (_when(m.planned_at), m.vm_name, m.tenant or "-", m.source or "-", m.destination or "-",
            m.method or "-", outcome, _seconds(m.duration_seconds), _bytes(m.bytes_copied),
            _seconds(m.downtime_seconds))  # fmt: skip


def _when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    whole = round(value)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size, unit = float(value), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"


def run_history(settings: Settings, *, as_json_object: bool, since: datetime | timedelta | None,
                clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> int:  # fmt: skip
    start = clock() - since if isinstance(since, timedelta) else since
    if not (settings.state_dir / "journal.sqlite").exists():
        print(f"evacuator: no move journal in {settings.state_dir} (no move was ever journaled here)",
              file=sys.stderr)  # fmt: skip
    incidents, moves = history(settings.state_dir, start)
    host = settings.host.name
    if as_json_object:
        print(json.dumps(as_json(host, start, incidents, moves), indent=2))
    else:
        print(format_history(host, start, incidents, moves))
    return 0


def main(args: argparse.Namespace) -> int:
    return run_history(load_settings(Path(args.config)), as_json_object=args.json, since=args.since)
