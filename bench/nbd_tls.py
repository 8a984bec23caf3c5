"""NBD with TLS, the standard tool for a copy between hosts, timed as the data channel is: a server writing
the destination file (nbdkit's file plugin, or qemu-nbd), nbdcopy reading the source and flushing at the end.

The trust is as close to the data channel's tickets as NBD allows: a fresh random pre-shared key (TLS-PSK)
for each copy, handed to both ends as a file (a ticket would carry it over the broker), the server taking
TLS only. Each copy starts its own server on a free loopback port (as a per-ticket key requires) and that
start is timed too, as the channel's ticket and connection are.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PSK_USER = "evacuator"
READY_TIMEOUT_SECONDS = 10.0


def nbd_available() -> list[str]:
    """The NBD servers installed next to nbdcopy (libnbd-bin): "nbdkit", "qemu-nbd", or none."""
    if shutil.which("nbdcopy") is None:
        return []
    return [tool for tool in ("nbdkit", "qemu-nbd") if shutil.which(tool) is not None]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server(tool: str, target: Path, port: int, psk_directory: Path, pid_file: Path) -> list[str]:
    if tool == "nbdkit":
        # Its defaults, as Debian ships them: nbdcopy then drives 4 connections (the file plugin allows
        # several), each with requests in flight.
        return [
            "nbdkit",
            "--exit-with-parent",
            "--tls=require",
            f"--tls-psk={psk_directory / 'keys.psk'}",
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-P",
            str(pid_file),
            "file",
            str(target),
        ]
    return [
        "qemu-nbd",
        "--fork",
        "--pid-file",
        str(pid_file),
        "-f",
        "raw",
        "--cache=writeback",
        "--aio=threads",
        "--shared=8",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "--object",
        f"tls-creds-psk,id=tls0,endpoint=server,dir={psk_directory}",
        "--tls-creds",
        "tls0",
        str(target),
    ]


def _wait_for_pid(pid_file: Path, server: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if pid_file.exists() and (text := pid_file.read_text().strip()):
            return int(text)
        if server.poll() not in (None, 0):
            raise SystemExit(f"the NBD server exited with {server.returncode}")
        time.sleep(0.002)
    raise SystemExit("the NBD server did not get ready")


def nbd_copy_seconds(tool: str, source: Path, target: Path, work: Path) -> float:
    """Seconds from starting `tool` on a fresh `target` until nbdcopy, over TLS-PSK, has flushed it."""
    work.mkdir(exist_ok=True)
    psk_directory = work / "psk"
    psk_directory.mkdir(mode=0o700, exist_ok=True)
    pid_file = work / "server.pid"
    pid_file.unlink(missing_ok=True)
    began = time.monotonic()
    (psk_directory / "keys.psk").write_text(f"{PSK_USER}:{secrets.token_hex(32)}\n")
    with target.open("wb") as fresh:  # a fresh volume: its size, no data (the NBD export's size)
        fresh.truncate(source.stat().st_size)
    port = _free_port()
    server = subprocess.Popen(_server(tool, target, port, psk_directory, pid_file))
    pid = _wait_for_pid(pid_file, server)
    try:
        subprocess.run(
            [
                "nbdcopy",
                "--flush",
                "--destination-is-zero",
                str(source),
                f"nbds://{PSK_USER}@127.0.0.1:{port}/?tls-psk-file={psk_directory / 'keys.psk'}",
            ],
            check=True,
        )
        seconds = time.monotonic() - began
    finally:
        os.kill(pid, signal.SIGTERM)
        server.wait(10)
        if tool == "qemu-nbd":
            _wait_gone(pid)
    return seconds


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
