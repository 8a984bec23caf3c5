"""The demo's story from its daemons' log events: one line per step, the rest left to the JSON log, a fallback
or a warning always told; the plain table and the JSON log file."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from evacuator.commands.demo_output import JsonLog, PlainTeller, teller_for
from evacuator.commands.demo_story import Line, Story, Tone

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
WEB = "6f1c2a9e-0000-4000-8000-000000000001"


class RecordingTeller:
    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.tables: list[tuple[str, tuple[str, ...], Sequence[tuple[str, ...]]]] = []

    def say(self, line: Line) -> None:
        self.lines.append(line)

    def note(self, text: str) -> None:
        pass

    def table(self, title: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
        self.tables.append((title, columns, rows))


def _at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def _told(events: list[tuple[str, float, dict[str, Any]]]) -> tuple[Story, list[str]]:
    teller = RecordingTeller()
    story = Story(teller)
    story.name_vms({WEB: "shop-web"})
    for who, seconds, event in events:
        story.event(who, {"level": "info", "timestamp": _at(seconds), **event})
    return story, [f"{line.who} {line.text}" for line in teller.lines]


def _step(step: str, seconds: float, at: float) -> tuple[str, float, dict[str, Any]]:
    return ("host-a", at, {"event": "move_step_finished", "vm_uuid": WEB, "step": step, "seconds": seconds,
                           "error": None})  # fmt: skip


def test_a_move_through_the_destinations_daemon_is_told_step_by_step_with_its_downtime() -> None:
    story, lines = _told([
        ("host-a", 0.0, {"event": "host_verdict_changed", "previous": None, "severity": "healthy"}),
        ("host-a", 0.1, {"event": "daemon_ready", "host": "host-a"}),
        # Copied during its window (moves/window_copies.py), before its move starts.
        ("host-a", 0.5, {"event": "data_channel_sent", "host": "host-b", "volume": "shop-web.raw",
                         "bytes_written": 4 << 20, "tls": True}),
        ("host-a", 1.0, {"event": "tenant_ready", "vm_uuid": WEB}),
        ("host-a", 1.0, {"event": "evacuation_window_closed", "vm_uuid": WEB}),
        ("host-a", 1.1, {"event": "move_started", "vm_uuid": WEB, "vm_name": "shop-web",
                         "destination": "host-b"}),
        ("host-a", 1.3, {"event": "notice_stored", "vm_uuid": WEB}),
        ("host-a", 4.0, {"event": "vm_forced_off", "vm_uuid": WEB, "level": "warning"}),
        _step("quiesce", 3.0, 4.0),
        ("host-a", 4.1, {"event": "precopy_finished", "volume": "shop-web.raw", "patched_bytes": 0}),
        _step("copy_disks", 0.02, 4.1),
        ("host-a", 4.2, {"event": "peer_digest_received", "host": "host-b", "volume": "shop-web.raw"}),
        _step("verify_disks", 0.05, 4.2),
        _step("start", 0.5, 4.7),
        ("host-a", 4.8, {"event": "move_finished", "vm_uuid": WEB, "seconds": 3.7, "bytes_copied": 4 << 20}),
    ])  # fmt: skip
    assert lines == [
        "host-a daemon ready: sensors, libvirt and broker up; verdict healthy",
        "host-a shop-web: window over, its tenant is ready",
        "host-a shop-web: move to host-b started",
        "host-a shop-web:   quiesce        3.00 s (no OS answers ACPI: forced off at the timeout)",
        "host-a shop-web:   copy_disks     0.02 s (4.0 MiB through host-b's data channel before the guest "
        "was off; nothing changed since)",
        "host-a shop-web:   verify_disks   0.05 s (digest from host-b's daemon equal)",
        "host-a shop-web:   start          0.50 s",
        "host-a shop-web: on host-b after 3.7 s, down 0.7 s",
    ]
    move = story.moves()[WEB]
    assert move.downtime_seconds == pytest.approx(0.7), "guest off (quiesce) to running there (start)"
    assert (move.channel_bytes, move.peer_digest) == (4 << 20, True)


@pytest.mark.parametrize("event", [
    {"event": "data_channel_unavailable", "level": "info", "host": "host-b", "reason": "no daemon listens"},
    {"event": "peer_digest_unavailable", "level": "info", "host": "host-b", "reason": "no daemon listens"},
    {"event": "move_failed", "level": "error", "vm_uuid": WEB, "error": "pool full"},
])  # fmt: skip
def test_a_fallback_or_a_warning_is_always_told(event: dict[str, Any]) -> None:
    _, lines = _told([("host-a", 1.0, event)])
    assert len(lines) == 1 and event["event"] in lines[0]


def test_a_copy_received_before_its_move_started_was_made_ahead() -> None:
    received = {"event": "volume_received", "volume": "shop-web.raw", "bytes_written": 4 << 20}
    started = {"event": "move_started", "vm_uuid": WEB, "vm_name": "shop-web", "destination": "host-b"}
    _, lines = _told([
        ("host-b", 1.0, received),
        ("host-a", 2.0, started),
        ("host-b", 3.0, received),
    ])  # fmt: skip
    assert lines == [
        "host-b shop-web.raw received over its data channel: 4.0 MiB written, ahead of its move",
        "host-a shop-web: move to host-b started",
        "host-b shop-web.raw received over its data channel: 4.0 MiB written",
    ]


def test_a_window_that_runs_out_says_so() -> None:
    _, lines = _told([("host-a", 8.0, {"event": "evacuation_window_closed", "vm_uuid": WEB})])
    assert lines == ["host-a shop-web: window over, its time ran out"]


def test_plain_lines_and_table_for_a_pipe() -> None:
    out = io.StringIO()
    teller = teller_for(out)
    assert isinstance(teller, PlainTeller)
    teller.say(Line(at=T0 + timedelta(milliseconds=250), who="host-a", text="verdict severe", tone=Tone.BAD))
    teller.table("After", ("VM", "checksum equal"), [("shop-web", "yes")])
    assert out.getvalue().splitlines() == [
        "12:00:00.2  host-a  verdict severe",
        "",
        "After",
        "VM        checksum equal",
        "--------  --------------",
        "shop-web  yes",
    ]


def test_the_json_log_keeps_every_line_with_the_process_that_wrote_it(tmp_path: Path) -> None:
    with JsonLog(tmp_path / "demo.jsonl") as log:
        log.line("host-b", json.dumps({"event": "volume_received", "level": "info"}))
        log.line("host-a", "Traceback (most recent call last):")
        stream = log.stream("demo")
        stream.write(json.dumps({"event": "lab_hosts_started"}))  # as print() writes: the line, then its end
        stream.write("\n")
    written = [json.loads(line) for line in (tmp_path / "demo.jsonl").read_text().splitlines()]
    assert written == [
        {"process": "host-b", "event": "volume_received", "level": "info"},
        {"process": "host-a", "event": "log_line", "line": "Traceback (most recent call last):"},
        {"process": "demo", "event": "lab_hosts_started"},
    ]
