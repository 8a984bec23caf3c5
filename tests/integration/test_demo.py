"""The README's first command runs to completion here and tells the evacuation as a newcomer reads it: a line
per step with its time, a closing table per VM, and the full JSON log in a file it names, in which both hosts'
own daemons took part (the data channel and the peer digest, never libvirt's fallback). It leaves nothing
behind: no VM, daemon or libvirtd, broker user or vhost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from evacuator.commands.demo_story import FALLBACK_EVENTS
from evacuator.lab.broker import LabBroker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d  (?P<who>[a-z-]+) +(?P<text>.+)$")
STEPS = ("quiesce", "copy_disks", "verify_disks", "define", "start", "verify", "clean_up")
VMS = ("shop-web", "shop-db")


def _run_demo(state_dir: Path) -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"^(\./scripts/demo)\b", readme, re.MULTILINE)
    assert command, "the README must start with the demo command"
    # CI=true as in CI: nothing may wait for a person; stdout a pipe, so plain lines rather than rich's.
    done = subprocess.run(
        ["bash", command.group(1), "--state-dir", str(state_dir)], cwd=ROOT, capture_output=True, text=True,
        timeout=420, check=False, env={**os.environ, "CI": "true"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-4000:]
    return done.stdout


def _story(output: str) -> list[tuple[str, str]]:
    return [(m["who"], m["text"]) for m in map(LINE.match, output.splitlines()) if m]


def _said(story: list[tuple[str, str]], who: str, pattern: str) -> list[str]:
    return [text for speaker, text in story if speaker == who and re.search(pattern, text)]


def _log(output: str) -> list[dict[str, Any]]:
    named = re.findall(r"the full JSON log is (\S+\.jsonl)", output)
    assert named and len(set(named)) == 1, "the demo names its log file, at the start and at the end"
    path = Path(named[0])
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    finally:
        path.unlink()


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if text in words:
            found.append(words)
    return found


def _ctl(broker: LabBroker, *arguments: str) -> str:
    return subprocess.run([*broker.rabbitmqctl, "--quiet", *arguments], capture_output=True, text=True,
                          timeout=60, check=True).stdout  # fmt: skip


def test_readme_demo_tells_the_evacuation_by_both_hosts_daemons_and_leaves_nothing_behind(
    lab_broker: LabBroker,
) -> None:
    # Short: libvirtd's sockets live under it, and a unix socket path holds 107 bytes at most (pytest's own
    # tmp_path under xdist, /tmp/pytest-of-root/pytest-N/popen-gwN/<test name>/, leaves too little).
    state_dir = Path(tempfile.mkdtemp(prefix="evacuator-demo-test-", dir="/tmp")) / "demo"
    output = _run_demo(state_dir)
    story = _story(output)
    assert "demo succeeded" in output

    for host in ("host-a", "host-b"):
        assert _said(story, host, r"^daemon ready: .*; verdict healthy$"), f"{host} runs its own daemon"
    assert _said(story, "host-a", r"^verdict severe: .*97 °C, threshold 90 °C$")
    assert _said(story, "tenant", r"^notice: host-a is severe .*; leaving: .*shop-web by .*")
    assert _said(story, "tenant", r"^shop-web drained: answers ready$")
    assert _said(story, "host-a", r"^shop-web: window over, its tenant is ready$")
    assert _said(story, "host-a", r"^shop-db: window over, its time ran out$")
    for vm in VMS:
        assert _said(story, "host-a", rf"^{vm}: move to host-b started$")
        assert _said(story, "host-b", rf"^grants host\.host-a room for {vm} ")
        for step in STEPS:
            lines = _said(story, "host-a", rf"^{vm}: +{step} +\d+\.\d\d s")
            assert len(lines) == 1, f"{vm}'s step {step} told once with its time: {lines}"
        assert _said(story, "host-a", rf"^{vm}: +copy_disks .*through host-b's data channel")
        assert _said(story, "host-a", rf"^{vm}: +verify_disks .*digest from host-b's daemon equal")
        assert _said(story, "tenant", rf"^notice: {vm} evacuated, runs on host-b$")
        row = re.search(rf"^{vm} +(.+)$", output, re.MULTILINE)
        assert row, f"a row of the closing table for {vm}"
        assert re.fullmatch(r"host-b \(running\) +nothing +\d+\.\d s +4\.0 MiB via host-b's daemon +yes",
                            row.group(1).rstrip()), row.group(0)  # fmt: skip
    assert _said(story, "tenant", r"^notice: evacuation completed$")
    assert _said(story, "lab", r"^daemons stopped \(SIGTERM\): host-a exit 0, host-b exit 0$")
    assert len(story) < 60, "a story, not a log"

    events = _log(output)
    names = [(e["process"], e["event"]) for e in events]
    fallbacks = [e for e in events if e["event"] in FALLBACK_EVENTS]
    assert fallbacks == [], "no copy or digest went around host-b's daemon"
    assert names.count(("host-b", "volume_received")) == 2 and names.count(("host-b", "daemon_started")) == 1
    assert names.count(("host-a", "peer_digest_received")) == 2
    assert {"demo", "host-a", "host-b"} <= {process for process, _ in names}

    assert not state_dir.exists()
    state_dir.parent.rmdir()  # ours, and empty: the demo left nothing in it
    assert _processes_mentioning(str(state_dir)) == [], "no daemon or libvirtd of the demo still runs"
    if not lab_broker.private:  # the demo used this broker; a private one it started is stopped already
        vhost = re.search(r"broker vhost (evacuator-demo-[0-9a-f]+)", output)
        assert vhost and vhost.group(1) not in _ctl(lab_broker, "list_vhosts").split()
        users = {line.split("\t")[0] for line in _ctl(lab_broker, "list_users").splitlines()}
        tenant = re.search(r"tenant (demo-shop-[0-9a-f]+)", output)
        assert tenant and not {"host.host-a", "host.host-b", tenant.group(1)} & users
