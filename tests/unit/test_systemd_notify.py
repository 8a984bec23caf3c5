"""SystemdNotifier against a real AF_UNIX datagram socket, as systemd holds one: what it sends, when it is
meant for this process, and that a missing socket never raises."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from evacuator.wiring.systemd import SystemdNotifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield sock, str(path)


def test_each_message_is_one_datagram_in_the_protocols_words(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    assert notifier.enabled and notifier.watchdog_interval_seconds == 30.0
    notifier.status("connecting")
    notifier.ready("watching hv-01")
    notifier.watchdog()
    notifier.stopping("stopping")
    assert [sock.recv(4096).decode() for _ in range(4)] == [
        "STATUS=connecting", "READY=1\nSTATUS=watching hv-01", "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping",
    ]  # fmt: skip


def test_a_reload_says_reloading_and_when_it_began(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before_usec = time.monotonic_ns() // 1000
    SystemdNotifier.from_environment({"NOTIFY_SOCKET": path}).reloading("reloading the settings")
    first, stamp, status = sock.recv(4096).decode().split("\n")
    after_usec = time.monotonic_ns() // 1000
    assert (first, status) == ("RELOADING=1", "STATUS=reloading the settings")
    name, _, value = stamp.partition("=")
    assert name == "MONOTONIC_USEC" and before_usec <= int(value) <= after_usec


def test_an_abstract_socket_is_reached_by_its_at_sign_name() -> None:
    name = f"evacuator-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        pytest.param({"WATCHDOG_USEC": "5000000"}, 5.0, id="watchdog-for-any-pid"),
        pytest.param({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}, 5.0, id="for-this-pid"),
        pytest.param({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}, None, id="for-another-pid"),
        pytest.param({"WATCHDOG_USEC": "0"}, None, id="zero-is-off"),
        pytest.param({"WATCHDOG_USEC": "soon"}, None, id="garbage-is-off"),
        pytest.param({}, None, id="no-watchdog"),
    ],
)
def test_the_watchdog_is_on_only_when_systemd_meant_it_for_this_process(
    listener: tuple[socket.socket, str], environ: dict[str, str], interval: float | None
) -> None:
    sock, path = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path, **environ})
    assert notifier.watchdog_interval_seconds == interval
    notifier.watchdog()
    notifier.status("after")
    assert sock.recv(4096) == (b"WATCHDOG=1" if interval is not None else b"STATUS=after")


def test_without_a_notify_socket_nothing_is_sent_or_raised() -> None:
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    with capture_logs() as logs:
        notifier.ready("up")
        notifier.watchdog()
    assert logs == []


def test_a_socket_that_is_gone_is_logged_never_raised(tmp_path: Path) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with capture_logs() as logs:
        notifier.ready("up")
    assert [(e["event"], e["message"]) for e in logs] == [("systemd_notify_failed", "READY=1")]
