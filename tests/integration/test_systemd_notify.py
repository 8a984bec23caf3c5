"""The daemon under systemd's notify protocol, as `Type=notify` with `WatchdogSec=` runs it: the test is the
service manager, holding the $NOTIFY_SOCKET datagram socket the real daemon (real lab libvirt, real broker)
writes to. READY=1 only once libvirt and the broker are connected and the sensors read; WATCHDOG=1 after
every poll; no READY=1 at all when the broker cannot be reached (the daemon exits non-zero instead)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from evacuator.lab.hosts import LabHost
from evacuator.lab.sysfs import HeatableHwmon
from notifiers.settings import BrokerSettings
from tests.fixtures.daemon import POLL_SECONDS, notifications, write_config

pytestmark = pytest.mark.integration

WATCHDOG_USEC = 2_000_000  # 2 s: the lab daemon polls every POLL_SECONDS


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.5)
        yield sock, path


def _run(config: Path, notify: Path) -> subprocess.Popen[str]:
    """The daemon, its log in `daemon.log` beside its config (pytest shows the path on a failure)."""
    env = {**os.environ, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    with (config.parent / "daemon.log").open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "evacuator.cli", "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)  # fmt: skip


def test_the_daemon_is_ready_after_its_first_poll_then_feeds_the_watchdog_and_says_it_stops(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
    notify_socket: tuple[socket.socket, Path],
) -> None:
    host_a, host_b = clean_lab_hosts
    sock, path = notify_socket
    HeatableHwmon(tmp_path / "sys", celsius=45)
    process = _run(write_config(tmp_path, host_a, host_b, broker_settings, tmp_path / "sys"), path)
    try:
        before_ready = notifications(sock, 60, until="READY=1")
        assert before_ready and "READY=1" in before_ready[-1], before_ready
        assert before_ready[0] == "STATUS=connecting to libvirt and the broker"
        assert before_ready[-1] == "READY=1\nSTATUS=watching host-a"
        assert not any("WATCHDOG=1" in m for m in before_ready), "no watchdog ping before the first poll"
        after = notifications(sock, 10 * POLL_SECONDS)
        pings = [m for m in after if m == "WATCHDOG=1"]
        assert len(pings) >= 5, after  # one a poll, POLL_SECONDS apart
        process.terminate()
        assert process.wait(timeout=60) == 0
        stopping = notifications(sock, 2, until="STOPPING=1")
        assert stopping and stopping[-1].startswith("STOPPING=1\nSTATUS="), stopping
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_no_ready_when_the_broker_cannot_be_reached(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings,
    notify_socket: tuple[socket.socket, Path],
) -> None:
    host_a, host_b = clean_lab_hosts
    sock, path = notify_socket
    HeatableHwmon(tmp_path / "sys", celsius=45)
    config = write_config(tmp_path, host_a, host_b, broker_settings, tmp_path / "sys")
    settings = yaml.safe_load(config.read_text())
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings["broker"]["url"] = f"amqp://guest:guest@127.0.0.1:{closed_port}/%2F"
    config.write_text(yaml.safe_dump(settings))
    process = _run(config, path)
    try:
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert code != 0
    messages = notifications(sock, 1)
    assert not any("READY=1" in m for m in messages), messages
    assert not any("WATCHDOG=1" in m for m in messages), messages
