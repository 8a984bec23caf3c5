"""Shape one poll of every source as the `evacuator sensors` report: a JSON-ready dict and a text table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monitors.readings import (
    CsrowReading,
    DimmReading,
    HostSnapshot,
    MemoryControllerReading,
    MemoryErrorEvent,
    TemperatureReading,
)
from monitors.verdicts import HostVerdict

REPORT_SCHEMA_VERSION = 1


def build_sensor_report(
    snapshot: HostSnapshot, *, sysfs_root: Path | None = None, verdict: HostVerdict | None = None
) -> dict[str, Any]:
    """The `--json` object; fault paths under `sysfs_root` are shown as under `/sys`, which it stands for."""
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "temperatures": [_temperature(t) for t in snapshot.temperatures],
        "memory_controllers": [_controller(m) for m in snapshot.memory_controllers],
        "memory_events": [_event(e) for e in snapshot.memory_events],
        "faults": [{"path": _display_path(f.path, sysfs_root), "reason": f.reason} for f in snapshot.faults],
        "sources": [
            {"source": s.source, "state": str(s.state), "detail": s.detail} for s in snapshot.sources
        ],
    }
    if verdict is not None:
        report["verdict"] = {
            "severity": str(verdict.severity),
            "at": verdict.at.isoformat(),
            "reasons": [
                {
                    "source": r.source,
                    "sensor": r.sensor,
                    "value": r.value,
                    "threshold": r.threshold,
                    "unit": r.unit,
                    "severity": str(r.severity),
                    "message": r.message,
                }
                for r in verdict.reasons
            ],
        }
    return report


def _temperature(t: TemperatureReading) -> dict[str, Any]:
    return {
        "chip": t.chip,
        "hwmon": t.hwmon,
        "sensor": t.sensor,
        "label": t.label,
        "celsius": t.celsius,
        "max_celsius": t.max_celsius,
        "crit_celsius": t.crit_celsius,
        "emergency_celsius": t.emergency_celsius,
        "max_hyst_celsius": t.max_hyst_celsius,
        "crit_hyst_celsius": t.crit_hyst_celsius,
        "source": t.source,
    }


def _controller(m: MemoryControllerReading) -> dict[str, Any]:
    return {
        "controller": m.controller,
        "mc_name": m.mc_name,
        "ce_count": m.ce_count,
        "ue_count": m.ue_count,
        "ce_noinfo_count": m.ce_noinfo_count,
        "ue_noinfo_count": m.ue_noinfo_count,
        "csrows": [_csrow(c) for c in m.csrows],
        "dimms": [_dimm(d) for d in m.dimms],
    }


def _csrow(c: CsrowReading) -> dict[str, Any]:
    return {
        "csrow": c.csrow,
        "ce_count": c.ce_count,
        "ue_count": c.ue_count,
        "channels": [
            {"channel": ch.channel, "ce_count": ch.ce_count, "dimm_label": ch.dimm_label} for ch in c.channels
        ],
    }


def _dimm(d: DimmReading) -> dict[str, Any]:
    return {"dimm": d.dimm, "label": d.label, "ce_count": d.ce_count, "ue_count": d.ue_count}


def _event(e: MemoryErrorEvent) -> dict[str, Any]:
    return {
        "source": e.source,
        "event_id": e.event_id,
        "location": e.location,
        "kind": str(e.kind),
        "count": e.count,
        "at": e.at.isoformat() if e.at else None,
        "message": e.message,
    }


def _display_path(path: str, sysfs_root: Path | None) -> str:
    if sysfs_root is None:
        return path
    for root in (sysfs_root.resolve(), sysfs_root):
        try:
            return str(Path("/sys") / Path(path).relative_to(root))
        except ValueError:
            continue
    return path


def format_sensor_report(report: dict[str, Any]) -> str:
    """A readable table of the same report, for a terminal."""
    lines = ["TEMPERATURES", f"  {'chip':<34} {'sensor':<8} {'label':<16} {'°C':>7} {'max':>7} {'crit':>7}"]
    for t in report["temperatures"]:
        lines.append(
            f"  {t['chip']:<34} {t['sensor']:<8} {t['label'] or '-':<16} {t['celsius']:>7.1f}"
            f" {_num(t['max_celsius']):>7} {_num(t['crit_celsius']):>7}"
        )
    lines.append("MEMORY CONTROLLERS")
    for m in report["memory_controllers"]:
        lines.append(
            f"  {m['controller']} {m['mc_name'] or ''}: CE {_num(m['ce_count'])} UE {_num(m['ue_count'])}"
            f" (no-info CE {_num(m['ce_noinfo_count'])} UE {_num(m['ue_noinfo_count'])})"
        )
        for d in m["dimms"]:
            lines.append(
                f"    {d['dimm']:<8} {d['label'] or '-':<34}"
                f" CE {_num(d['ce_count'])} UE {_num(d['ue_count'])}"
            )
        for c in m["csrows"]:
            channels = ", ".join(
                f"{ch['channel']}={_num(ch['ce_count'])} ({ch['dimm_label']})" for ch in c["channels"]
            )
            lines.append(f"    {c['csrow']:<8} CE {_num(c['ce_count'])} UE {_num(c['ue_count'])}: {channels}")
    for e in report["memory_events"]:
        lines.append(f"EVENT {e['source']} #{e['event_id']} {e['kind']} x{e['count']} on {e['location']}")
    for f in report["faults"]:
        lines.append(f"FAULT {f['path']}: {f['reason']}")
    for s in report["sources"]:
        lines.append(f"SOURCE {s['source']}: {s['state']}" + (f" ({s['detail']})" if s["detail"] else ""))
    if "verdict" in report:
        lines.append(f"VERDICT {report['verdict']['severity']}")
        lines.extend(f"  {r['severity']}: {r['message']}" for r in report["verdict"]["reasons"])
    return "\n".join(lines)


def _num(value: float | int | None) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)
