"""The README's first command runs to completion here and prints every step of the evacuation with times."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z \[")
STEPS = ("quiesce", "copy_disks", "verify_disks", "define", "start", "verify", "clean_up")


def test_readme_demo_command_evacuates_and_shows_a_timestamped_timeline() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"^(\./scripts/demo)\b", readme, re.MULTILINE)
    assert command, "the README must start with the demo command"
    done = subprocess.run(
        ["bash", command.group(1)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    output = done.stdout
    assert done.returncode == 0, output[-4000:] + done.stderr[-4000:]
    assert "demo succeeded" in output
    events = [line for line in output.splitlines() if STAMP.match(line)]
    names = [line.split("]", 1)[1].split()[0] for line in events]
    for expected in ("demo_sensor_heated", "host_verdict_changed", "evacuation_planned", "notice_confirmed",
                     "demo_tenant_ready", "evacuation_window_closed", "move_started", "move_finished",
                     "demo_tenant_vm_moved"):  # fmt: skip
        assert expected in names, f"{expected} missing from the demo timeline"
    for step in STEPS:
        finished = [line for line in events if "move_step_finished" in line and f"step={step} " in line]
        assert len(finished) == 2, f"step {step} should finish once per VM, got {finished}"
    assert output.count(": OK ") == 2
