"""`systemctl reload` on the real daemon (real lab libvirt, real broker): SIGHUP reads the settings file
again, a lower threshold makes the warm host severe, a file that cannot be used changes nothing and says why,
a setting only a restart takes is named; systemd hears RELOADING=1 and READY=1 around each reload."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from evacuator.lab.hosts import LabHost
from evacuator.lab.sysfs import HeatableHwmon
from notifiers.settings import BrokerSettings
from tests.fixtures.daemon import CONSECUTIVE, POLL_SECONDS, Daemons, notifications, write_config

pytestmark = pytest.mark.integration

SECRET = "n0t-For-The-Log"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """The test as systemd: the daemon it starts next writes its notifications here."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def _messages_until(sock: socket.socket, wanted: str, seconds: float) -> list[str]:
    got = notifications(sock, seconds, until=wanted)
    assert got and got[-1].startswith(wanted), f"no {wanted} within {seconds} s: {got}"
    return got


def test_sighup_applies_a_new_threshold_refuses_a_bad_file_and_names_what_needs_a_restart(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings, daemon: Daemons,
    notify_socket: socket.socket,
) -> None:  # fmt: skip
    host_a, host_b = clean_lab_hosts
    HeatableHwmon(tmp_path / "sys", celsius=80)  # warm, under the 90 °C threshold
    # Quarantine only: this test is about the verdict, not about moving VMs.
    config = write_config(tmp_path, host_a, host_b, broker_settings, tmp_path / "sys",
                          evacuation={"on_severe": "quarantine"})  # fmt: skip
    log = daemon(config)
    log.wait_for("daemon_ready", 30)
    _messages_until(notify_socket, "READY=1", 10)
    time.sleep(POLL_SECONDS * (CONSECUTIVE + 2))
    assert log.matching("host_verdict_changed", severity="severe") == []

    good = yaml.safe_load(config.read_text())
    good["monitors"]["temperature"]["threshold_celsius"] = 75
    good["evacuation"]["shutdown_timeout_seconds"] = 30  # the engine's: only a restart takes it
    config.write_text(yaml.safe_dump(good), encoding="utf-8")
    os.kill(log.pid, signal.SIGHUP)
    reloaded = log.wait_for("settings_reloaded", 10)
    assert reloaded["changes"] == {"monitors.temperature.threshold_celsius": {"old": 90.0, "new": 75.0}}
    assert reloaded["needs_restart"] == ["evacuation.shutdown_timeout_seconds"]
    restart = log.wait_for("settings_need_restart", 1)
    assert restart["fields"] == ["evacuation.shutdown_timeout_seconds"] and restart["level"] == "warning"
    around = _messages_until(notify_socket, "READY=1", 10)
    assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in around), around
    assert around[-1] == "READY=1\nSTATUS=watching host-a"
    # 80 °C is over the new threshold: severe after N consecutive samples, as at start.
    log.wait_for("host_verdict_changed", 10 + POLL_SECONDS * CONSECUTIVE, severity="severe")
    log.wait_for("evacuation_withheld", 5, decision="quarantine")

    # A file that cannot be read: nothing changes, the reason is logged without the file's values.
    config.write_text(f"broker: {{url: amqp://u:{SECRET}@mq/v\nmonitors: [\n", encoding="utf-8")
    os.kill(log.pid, signal.SIGHUP)
    refused = log.wait_for("reload_refused", 10)
    assert refused["level"] == "error" and "not valid YAML" in refused["error"]
    assert refused["kept"] == "the settings in force"
    assert not any(SECRET in line for line in log.raw)
    assert _messages_until(notify_socket, "READY=1", 10)[-1] == "READY=1\nSTATUS=watching host-a"
    # Still watching with the threshold it had: the host stays severe, polls go on.
    time.sleep(POLL_SECONDS * 4)
    assert [e["severity"] for e in log.matching("host_verdict_changed")][-1] == "severe"
    assert log.matching("poll_failed") == []
    assert daemon.stop(log) == 0
