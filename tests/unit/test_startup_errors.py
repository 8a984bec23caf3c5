"""`evacuator run` that cannot start logs why as one `startup_failed` event in the configured log format (JSON
here: a pipe, as under systemd), with its stage and reason as fields, never a traceback, and exits 1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Br0ker-S3cret"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    hwmon = tmp_path / "sys" / "class" / "hwmon" / "hwmon0"
    hwmon.mkdir(parents=True)
    (hwmon / "name").write_text("coretemp\n")
    (hwmon / "temp1_input").write_text("45000\n")  # one working source: the start gets past the sensors
    return {
        "host": {"name": "hv-01", "libvirt_uri": "test:///default", "migration_address": "127.0.0.1"},
        "peers": [{"name": "hv-02", "libvirt_uri": "test:///default"}],
        "monitors": {"sysfs_root": str(tmp_path / "sys"),
                     "sources": {"rasdaemon": {"db_path": str(tmp_path / "no-such.db")}}},
        "broker": {"url": f"amqp://evacuator:{SECRET}@127.0.0.1:{_closed_port()}/%2F"},
        "metrics": {"enabled": False},
        "data_channel": {"enabled": False},
        "state_dir": str(tmp_path / "state"),
        "logging": {"format": "json"},
        **overrides,
    }  # fmt: skip


def _run(tmp_path: Path, text: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Runs the daemon on a settings file of `text`; every line it wrote to stderr, parsed as JSON."""
    path = tmp_path / "evacuator.yaml"
    path.write_text(text, encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "evacuator.cli", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr and SECRET not in done.stderr, done.stderr
    return done, [json.loads(line) for line in done.stderr.splitlines()]  # nothing but JSON lines


def _failure(events: list[dict[str, Any]]) -> dict[str, Any]:
    (failed,) = [e for e in events if e["event"] == "startup_failed"]
    assert failed is events[-1] and failed["level"] == "error"
    return failed


@pytest.mark.parametrize(("broken", "expected"), [
    ({"host": {"name": "hv-01"}, "peers": []}, "peers must list at least one host"),
    ({"evacuation": {"shutdown_timeout_secs": 5}}, "evacuation.shutdown_timeout_secs: unknown field"),
])  # fmt: skip
def test_invalid_settings_are_logged_as_json_the_file_asks_for(
    tmp_path: Path, broken: dict[str, Any], expected: str
) -> None:
    _, events = _run(tmp_path, yaml.safe_dump(_settings(tmp_path, **broken)))
    failed = _failure(events)
    assert failed["stage"] == "settings" and failed["config"].endswith("evacuator.yaml")
    assert expected in failed["reason"]


def test_a_file_that_is_not_yaml_is_logged_in_the_default_format(tmp_path: Path) -> None:
    # Nothing of the file can be read, so `auto`: JSON, since stderr is a pipe here (and under systemd).
    _, events = _run(tmp_path, "host: {name: hv-01\nlogging: {format: console}\n")
    failed = _failure(events)
    assert failed["stage"] == "settings" and "not valid YAML at line 2" in failed["reason"]


def test_invalid_settings_asking_for_console_logs_get_one_readable_line(tmp_path: Path) -> None:
    path = tmp_path / "evacuator.yaml"
    path.write_text(yaml.safe_dump(_settings(tmp_path, peers=[], logging={"format": "console"})))
    done = subprocess.run([sys.executable, "-m", "evacuator.cli", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "startup_failed" in line and "stage=settings" in line and "peers must list" in line


def test_an_unreachable_broker_is_logged_with_its_stage_and_no_password(tmp_path: Path) -> None:
    _, events = _run(tmp_path, yaml.safe_dump(_settings(tmp_path)))
    failed = _failure(events)
    assert (failed["stage"], failed["host"], failed["error_type"]) == ("broker", "hv-01", "BrokerUnavailable")
    assert "cannot connect to amqp://evacuator:***@127.0.0.1" in failed["reason"]


def test_an_unreachable_libvirt_is_logged_with_its_stage(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings["host"]["libvirt_uri"] = f"qemu+tcp://127.0.0.1:{_closed_port()}/system"
    _, events = _run(tmp_path, yaml.safe_dump(settings))
    failed = _failure(events)
    assert (failed["stage"], failed["error_type"]) == ("libvirt", "HypervisorError")
    assert "cannot connect to qemu+tcp://127.0.0.1" in failed["reason"]
