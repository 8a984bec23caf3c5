"""Secrets never leave in errors or logs: a fuzz of broken settings files carrying marker secrets through the
real `check-config` (in-process and as a process), `evacuator run`'s start-up errors, and the daemon's own
start-up log lines against the real broker (issue 18, finding 6). No mocks: the code paths production runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings

from evacuator.cli import main
from evacuator.lab.broker import LabBroker
from tests.fixtures.broker import BrokerJanitor
from tests.security.broken_settings import TAG, broken_files, valid_settings

ROOT = Path(__file__).resolve().parents[2]
SYSFS = ROOT / "tests" / "data" / "sysfs" / "intel-2s"
EXAMPLES = 1_500


def _check_config(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["check-config", str(path)])
    return status, out.getvalue() + err.getvalue()


def _leaks(output: str, markers: list[str]) -> list[str]:
    """The markers (or their random parts) the output holds."""
    found = [m for m in markers if m in output or m.rpartition("-")[2] in output]
    return found + ([TAG] if TAG in output else [])


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="secrets-fuzz-") as name:
        yield Path(name)


def test_the_fuzz_base_itself_is_valid(scratch: Path) -> None:
    for password_from in ("url", "file", "env"):
        path = scratch / f"valid-{password_from}.yaml"
        markers = [f"{TAG}-{i:02d}abcdef" for i in range(12)]
        path.write_text(yaml.safe_dump(valid_settings(markers, password_from)))
        assert _check_config(path) == (0, f"{path}: ok (host hv-01, 2 peer(s))\n")


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(case=broken_files())
def test_no_broken_settings_file_makes_check_config_show_a_secret(
    scratch: Path, case: tuple[bytes, list[str], str]
) -> None:
    content, markers, what = case
    event(what.split("+")[0])
    path = scratch / "evacuator.yaml"
    path.write_bytes(content)
    status, output = _check_config(path)
    assert status == 1, f"{what}: accepted\n{content.decode(errors='replace')}"
    assert _leaks(output, markers) == [], f"{what}: a secret in the output:\n{output}"
    assert output.startswith(str(path)), output  # still useful: the file, then where and what was expected


# --- the same through real processes: `check-config` as systemd's ExecStartPre runs it, and `run` ---

_M = f"{TAG}-{secrets.token_hex(6)}"
PROCESS_CASES = {
    # The issue's own finding: PyYAML quoted the line, `password: {S3cret...`, to the journal.
    "yaml_snippet": f"host: {{name: hv-01}}\nmonitors: {{sources: {{ipmi: {{password: {{{_M}\n",
    "peer_is_host": (
        f"host: {{name: hv-01, migration_address: 127.0.0.1}}\n"
        f"peers: [{{name: hv-01, libvirt_uri: 'qemu+tcp://u:{_M}@hv-02/system'}}]\n"
        f"broker: {{url: 'amqp://u:{_M}@mq/%2F'}}\n"
        f"monitors: {{sources: {{ipmi: {{password: {_M}}}}}}}\n"
    ),
    "url_in_braces": (
        f"host: {{name: hv-01}}\npeers: [{{name: hv-02, libvirt_uri: x}}]\nbroker: {{amqp://u:{_M}@mq/}}\n"
    ),
    "bad_port": (
        f"host: {{name: hv-01, migration_address: 127.0.0.1}}\n"
        f"peers: [{{name: hv-02, libvirt_uri: x}}]\n"
        f"broker: {{url: 'amqp://u:{_M}/x@mq/%2F'}}\n"
    ),
    "alias": f"host: {{name: hv-01}}\nbroker: {{url: *{_M}}}\n",
    "failover_password": (
        f"host: {{name: hv-01, migration_address: 127.0.0.1}}\n"
        f"peers: [{{name: hv-02, libvirt_uri: x}}]\n"
        f"broker: {{url: 'amqp://u@mq/%2F', password_env: X, failover_urls: ['amqp://u:{_M}@mq-2/%2F']}}\n"
    ),
}


def _evacuator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evacuator.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False, cwd=ROOT)  # fmt: skip


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize("case", sorted(PROCESS_CASES))
def test_a_process_given_a_broken_file_exits_1_without_a_secret(
    tmp_path: Path, case: str, command: str
) -> None:
    path = tmp_path / "evacuator.yaml"
    path.write_text(PROCESS_CASES[case], encoding="utf-8")
    done = _evacuator(command, *([] if command == "check-config" else ["--config"]), str(path))
    assert done.returncode == 1, done.stderr
    assert str(path) in done.stderr
    assert TAG not in done.stdout + done.stderr and _M not in done.stdout + done.stderr, done.stderr


# --- the daemon's start-up, against the real broker: its log lines and its start-up errors ---


@pytest.fixture
def broker_user(lab_broker: LabBroker) -> Iterator[tuple[str, str]]:
    """A broker user of this test with a marker password, and every permission on the default vhost."""
    user, password = f"secrets-{secrets.token_hex(4)}", f"{TAG}-{secrets.token_hex(8)}"
    ctl = list(lab_broker.rabbitmqctl)
    subprocess.run([*ctl, "add_user", user, password], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run([*ctl, "set_permissions", "-p", "/", user, ".*", ".*", ".*"], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        yield user, password
    finally:
        subprocess.run([*ctl, "delete_user", user], check=False, capture_output=True, timeout=60)


def _daemon_config(tmp_path: Path, broker: dict[str, Any], ipmi_password: str, *, ipmi: bool = False,
                   janitor: BrokerJanitor | None = None) -> Path:  # fmt: skip
    token = secrets.token_hex(3)
    if janitor is not None:  # what the daemon declares goes after the test
        for kind in ("notices", "replies", "peers"):
            janitor.exchange(f"secrets-{token}.{kind}")
        janitor.queue(f"secrets-{token}.replies.hv-01")
    config = {
        "host": {"name": "hv-01", "libvirt_uri": "test:///default", "storage_pool": "default-pool",
                 "migration_address": "127.0.0.1"},
        "peers": [{"name": "hv-02", "libvirt_uri": "test:///default", "storage_pool": "default-pool"}],
        "monitors": {"sysfs_root": str(SYSFS), "sources": {
            "rasdaemon": {"db_path": str(tmp_path / "none.db")},
            # Enabled, towards a port where no BMC answers (5 s per poll): its failure is logged, its password
            # never. Disabled, the password is in the settings all the same.
            "ipmi": {"enabled": ipmi, "port": 1, "username": "admin", "password": ipmi_password}}},
        "broker": {**broker, "notices_exchange": f"secrets-{token}.notices",
                   "replies_exchange": f"secrets-{token}.replies",
                   "peers_exchange": f"secrets-{token}.peers"},
        "data_channel": {"port": 0},
        "state_dir": str(tmp_path / "state"),
        "logging": {"format": "json", "level": "debug"},
    }  # fmt: skip
    path = tmp_path / "evacuator.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _run_until_started(config: Path, env: dict[str, str], *, timeout_seconds: float = 60) -> str:
    """`evacuator run` until a second after it logs daemon_started (then SIGKILL: start-up is what is read
    here), or until it exits; all it wrote."""
    process = subprocess.Popen([sys.executable, "-m", "evacuator.cli", "run", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               env={**os.environ, **env})  # fmt: skip
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if '"daemon_started"' in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout_seconds
        while process.poll() is None and not started.is_set() and time.monotonic() < deadline:
            started.wait(0.1)
        if started.is_set():
            time.sleep(1.0)  # the lines that follow start-up: the first poll, the first verdict
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        reader.join(timeout=5)
    return "".join(lines)


@pytest.mark.parametrize("password_from", ["url", "file", "env"])
def test_the_daemons_start_up_lines_never_hold_a_password(
    tmp_path: Path, lab_broker: LabBroker, broker_user: tuple[str, str], password_from: str,
    broker_janitor: BrokerJanitor,
) -> None:
    user, password = broker_user
    host = lab_broker.url.rpartition("@")[2]
    broker: dict[str, Any] = {"url": f"amqp://{user}:{password}@{host}"}
    env: dict[str, str] = {}
    if password_from == "file":
        (tmp_path / "broker.password").write_text(password + "\n", encoding="utf-8")
        broker = {"url": f"amqp://{user}@{host}", "password_file": str(tmp_path / "broker.password")}
    elif password_from == "env":
        env["EVACUATOR_TEST_BROKER_PASSWORD"] = password
        broker = {"url": f"amqp://{user}@{host}", "password_env": "EVACUATOR_TEST_BROKER_PASSWORD"}
    ipmi = f"{TAG}-{secrets.token_hex(8)}"
    config = _daemon_config(tmp_path, broker, ipmi, ipmi=password_from == "url", janitor=broker_janitor)
    output = _run_until_started(config, env)
    assert '"broker_connected"' in output and '"daemon_started"' in output, output[-3000:]
    assert f"amqp://{user}" in output  # the URL is logged, redacted
    assert password not in output and ipmi not in output and TAG not in output, output[-3000:]


@pytest.mark.parametrize("failure", ["wrong_password", "missing_file", "unset_variable"])
def test_a_start_up_that_cannot_reach_the_broker_says_why_without_the_password(
    tmp_path: Path, lab_broker: LabBroker, broker_user: tuple[str, str], failure: str
) -> None:
    user, password = broker_user
    host = lab_broker.url.rpartition("@")[2]
    wrong = f"{TAG}-{secrets.token_hex(8)}"
    broker: dict[str, Any] = {
        "wrong_password": {"url": f"amqp://{user}:{wrong}@{host}", "reconnect_max_seconds": 1},
        "missing_file": {"url": f"amqp://{user}@{host}", "password_file": str(tmp_path / "no-such-file")},
        "unset_variable": {"url": f"amqp://{user}@{host}", "password_env": "EVACUATOR_TEST_NO_SUCH_VARIABLE"},
    }[failure]
    output = _run_until_started(_daemon_config(tmp_path, broker, f"{TAG}-{secrets.token_hex(8)}"), {})
    last = output.strip().splitlines()[-1]
    # The start-up failure is one startup_failed event in the configured (JSON) log format, saying why.
    failed = json.loads(last)
    assert (failed["event"], failed["stage"]) == ("startup_failed", "broker"), output[-3000:]
    named = {
        "wrong_password": f"amqp://{user}:***@",
        "missing_file": "no-such-file",
        "unset_variable": "EVACUATOR_TEST_NO_SUCH_VARIABLE",
    }[failure]
    assert named in last, output[-3000:]
    assert password not in output and wrong not in output and TAG not in output, output[-3000:]


# --- several broker nodes: a start-up through a failover node, and one that reaches none ---


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there once the probe is closed


@pytest.mark.parametrize("password_from", ["url", "file"])
def test_a_start_up_through_a_failover_node_never_shows_the_password(
    tmp_path: Path, lab_broker: LabBroker, broker_user: tuple[str, str], password_from: str,
    broker_janitor: BrokerJanitor,
) -> None:  # fmt: skip
    user, password = broker_user
    live, dead = lab_broker.url.rpartition("@")[2], f"127.0.0.1:{_closed_port()}/%2F"
    broker: dict[str, Any] = {"url": f"amqp://{user}:{password}@{dead}", "failover_urls": [f"amqp://{user}@{live}"]}
    if password_from == "file":
        (tmp_path / "broker.password").write_text(password + "\n", encoding="utf-8")
        broker.update(url=f"amqp://{user}@{dead}", password_file=str(tmp_path / "broker.password"))
    config = _daemon_config(tmp_path, broker, f"{TAG}-{secrets.token_hex(8)}", janitor=broker_janitor)
    output = _run_until_started(config, {})
    assert '"broker_failover"' in output and '"daemon_started"' in output, output[-3000:]
    assert f"amqp://{user}" in output and dead in output  # the node skipped is named, redacted
    assert password not in output and TAG not in output, output[-3000:]


def test_a_start_up_that_reaches_no_node_names_each_without_the_password(
    tmp_path: Path, broker_user: tuple[str, str]
) -> None:
    user, _ = broker_user
    wrong = f"{TAG}-{secrets.token_hex(8)}"
    first, second = f"127.0.0.1:{_closed_port()}", f"127.0.0.1:{_closed_port()}"
    broker = {"url": f"amqp://{user}:{wrong}@{first}/%2F", "failover_urls": [f"amqp://{user}@{second}/%2F"],
              "reconnect_max_seconds": 1}  # fmt: skip
    output = _run_until_started(_daemon_config(tmp_path, broker, f"{TAG}-{secrets.token_hex(8)}"), {})
    # The start-up's error (its last line, whatever its format) names each node, the password hidden.
    last = output.strip().splitlines()[-1]
    assert "cannot connect to any node of the broker" in last, output[-3000:]
    assert f"amqp://{user}:***@{first}/%2F" in last and f"amqp://{user}@{second}/%2F" in last, last
    assert wrong not in output and TAG not in output, output[-3000:]
