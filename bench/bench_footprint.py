"""Measure the running daemon's footprint as an operator sees it: `evacuator run`'s RSS and CPU per poll.

Run: `.venv/bin/python bench/bench_footprint.py [--polls N] [--poll-seconds S] [--vms N]`. It brings up two
lab libvirt hosts, uses the lab broker (127.0.0.1:5672, else a private node), a one-chip hwmon tree, defines
a few stopped VMs of one tenant on host-a, and starts host-a's daemon with the production defaults (host view,
guard rails, metrics, data channel) on run-private exchanges. It reads /proc/<pid>/status (VmRSS, as `ps`
and `top` show) once the daemon says `daemon_ready` and again after N polls. CPU per poll is the poll loop's
own thread (the main one) from /proc/<pid>/task/<pid>/schedstat, in nanoseconds; the whole process's CPU over
the same polls (heartbeats, host view, timers included) is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pika
import yaml

from evacuator.lab.broker import ensure_broker
from evacuator.lab.hosts import LabHost, LabHosts, free_port_pair
from evacuator.lab.sysfs import HeatableHwmon
from evacuator.lab.vms import create_vm
from notifiers.topology import host_replies_queue, tenant_queue

GOAL_RSS_MB, GOAL_CPU_MS = 60.0, 2.0
MB = 1_000_000  # the goal says MB; /proc says kB (KiB): both are printed


def settings(host: LabHost, peer: LabHost, *, url: str, prefix: str, sysfs: Path, state: Path,
             poll_seconds: float) -> dict[str, Any]:  # fmt: skip
    """host's settings as in production, save the lab's broker and run-private exchange names."""
    return {
        "host": {"name": host.name, "libvirt_uri": host.socket_uri, "storage_pool": host.pool,
                 "migration_address": "127.0.0.1"},
        "peers": [{"name": peer.name, "libvirt_uri": peer.uri, "storage_pool": peer.pool,
                   "broker_user": "guest"}],
        "monitors": {"sysfs_root": str(sysfs), "poll_interval_seconds": poll_seconds},
        "broker": {"url": url, "notices_exchange": f"{prefix}.notices",
                   "replies_exchange": f"{prefix}.replies", "peers_exchange": f"{prefix}.peers"},
        "data_channel": {"listen_address": "127.0.0.1", "port": 0},
        "metrics": {"listen_address": "127.0.0.1", "port": 0},
        "state_dir": str(state),
        "logging": {"format": "json", "level": "info"},
    }  # fmt: skip


def status_kib(pid: int) -> dict[str, int]:
    fields = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0])
    return found


def cpu_ns(pid: int, tid: int | None = None) -> int:
    """CPU time of one thread (the poll loop's: the main one), or of every thread of the process."""
    tasks = [tid] if tid is not None else [int(p.name) for p in Path(f"/proc/{pid}/task").iterdir()]
    total = 0
    for task in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        except FileNotFoundError:  # a thread that ended between the listing and the read
            continue
    return total


def start_daemon(config: Path, timeout_seconds: float = 90) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-m", "evacuator.cli", "run", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    ready, tail = threading.Event(), []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:  # read to the end, so the daemon never blocks on a full pipe
            tail.append(line)
            del tail[:-20]
            try:
                if json.loads(line).get("event") == "daemon_ready":
                    ready.set()
            except (json.JSONDecodeError, AttributeError):
                continue

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout_seconds):
        process.kill()
        raise SystemExit("the daemon was not ready in time; its last lines:\n" + "".join(tail))
    return process


def clean_broker(url: str, prefix: str, host: str, tenant: str) -> None:
    """The run's durable queues and exchanges, off the broker others share."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in (tenant_queue(tenant), host_replies_queue(host, replies_exchange=f"{prefix}.replies")):
            channel.queue_delete(queue=queue)
        for kind in ("notices", "replies", "peers"):
            channel.exchange_delete(exchange=f"{prefix}.{kind}")
    finally:
        connection.close()


def verdict(ok: bool) -> str:
    return "goal met" if ok else "GOAL MISSED"


def report(start: dict[str, int], end: dict[str, int], polls: int, loop_ms: float, process_ms: float) -> None:
    def mb(kib: int) -> str:
        return f"{kib * 1024 / MB:.1f} MB ({kib / 1024:.1f} MiB)"

    print(f"after start (daemon_ready): RSS {mb(start['VmRSS'])}  anon {mb(start['RssAnon'])}"
          f"  file {mb(start['RssFile'])}  threads {start['Threads']}")  # fmt: skip
    print(f"after {polls} polls:{' ' * max(1, 15 - len(str(polls)))}RSS {mb(end['VmRSS'])}"
          f"  anon {mb(end['RssAnon'])}  file {mb(end['RssFile'])}  peak {mb(end['VmHWM'])}")  # fmt: skip
    rss = max(start["VmRSS"], end["VmRSS"]) * 1024 / MB
    print(f"RSS goal <= {GOAL_RSS_MB:.0f} MB: {rss:.1f} MB  {verdict(rss <= GOAL_RSS_MB)}")
    print(f"CPU per poll (poll loop thread): {loop_ms:.3f} ms  goal <= {GOAL_CPU_MS} ms"
          f"  {verdict(loop_ms <= GOAL_CPU_MS)}")  # fmt: skip
    print(f"CPU per poll interval (whole process, all threads): {process_ms:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=20)
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    parser.add_argument("--vms", type=int, default=2, help="stopped VMs of one tenant on the daemon's host")
    args = parser.parse_args()
    prefix, tenant = f"fp-{secrets.token_hex(3)}", f"fp{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="evacuator-footprint-") as tmp:
        base = Path(tmp)
        url = ensure_broker(base / "broker").url
        with LabHosts(base / "lab", base_port=free_port_pair()) as (host_a, host_b):
            for index in range(args.vms):
                create_vm(host_a.uri, host_a.pool, name=f"fp-{index}", tenant=tenant, window_seconds=60,
                          disk_bytes=1 << 20, data=b"footprint", mac=f"52:54:00:fb:00:{index:02x}",
                          start=False)  # fmt: skip
            sysfs = base / "sys"
            HeatableHwmon(sysfs)
            config = base / "evacuator.yaml"
            config.write_text(yaml.safe_dump(settings(host_a, host_b, url=url, prefix=prefix, sysfs=sysfs,
                                                      state=base / "state", poll_seconds=args.poll_seconds)))
            try:
                daemon = start_daemon(config)
                try:
                    start = status_kib(daemon.pid)
                    time.sleep(args.poll_seconds / 2)  # measure between polls: whole polls in the window
                    loop0, all0, began = cpu_ns(daemon.pid, daemon.pid), cpu_ns(daemon.pid), time.monotonic()
                    time.sleep(args.polls * args.poll_seconds)
                    loop1, all1 = cpu_ns(daemon.pid, daemon.pid), cpu_ns(daemon.pid)
                    polls = round((time.monotonic() - began) / args.poll_seconds)
                    end = status_kib(daemon.pid)
                finally:
                    daemon.terminate()
                    daemon.wait(timeout=60)
            finally:
                clean_broker(url, prefix, host_a.name, tenant)
    print(f"daemon: host-a, {args.vms} VMs, poll every {args.poll_seconds} s, production defaults")
    report(start, end, polls, (loop1 - loop0) / 1e6 / polls, (all1 - all0) / 1e6 / polls)


if __name__ == "__main__":
    main()
