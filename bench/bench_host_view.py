"""The host view at cloud scale: 200 agents publishing and hearing host states through the machine's RabbitMQ.

Run: `PYTHONPATH=. .venv/bin/python bench/bench_host_view.py [--agents 200] [--processes 4] [--changes 20]
[--interval 5] [--rate-seconds 15] [--url amqp://guest:guest@127.0.0.1:5672/%2F]`. Each agent is what a
daemon runs (evacuator/peers: a HostStatePublisher with a fixed room in place of libvirt, and a
HostStateSubscriber with its HostView), each on its own two broker connections; `--processes` worker
processes hold `--agents` between them. All connect as one broker user (the lab's; the per-host users'
permission checks cost the broker nothing measurable) to a run-private exchange, deleted at the end.

Measured: (1) latency: agent 0's verdict changes `--changes` times, at random moments within an interval;
for each change, the time from the change (set_status) until every agent's view holds it, p50/p99/max over
the changes (goal p99 < 1 s); (2) the broker's message rate at the interval: states published per second
(by the agents' publishers) and delivered per second (kept by the agents' views: every delivery of a newer
state), over `--rate-seconds` of steady state; (3) the agents' CPU (the worker processes' user and system
time) per delivery over the same seconds. Exits 1 if the latency goal fails.

What is simulated, and what is not: the broker and every agent share this machine's cores (2 in the lab):
at 8,000 deliveries/s the agents take about 1.4 cores and the broker about 0.45, so the latency measured is
mostly the wait for a core, and it rises with whatever else the machine runs (another test suite: seconds).
Compare changes by (3), run back to back. A real daemon has its own host's cores and hears 40 states/s.
Several agents share a worker process, and so its GIL: a state fanning out reaches that process's agents
one after another (50 x about 0.2 ms), where real daemons take it in parallel. Python's GIL switch interval
is left as it is: agents give the GIL up at every wait, and a longer interval changed nothing measurable.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import random
import resource
import secrets
import statistics
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pika
import structlog

from evacuator.hypervisor.room import HostRoom
from evacuator.peers.host_view import HostStateSubscriber, HostView
from evacuator.peers.messages import PeerTrust
from evacuator.peers.state_publisher import HostStatePublisher, HostStatus, Switches
from evacuator.placement.model import Verdict
from evacuator.placement.view import Heard
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings

GOAL_P99_SECONDS = 1.0
_GIB = 1 << 30
_ROOM = HostRoom(memory_capacity_bytes=256 * _GIB, memory_free_bytes=100 * _GIB, vcpus_capacity=64,
                 vcpus_free=20, pool_capacity_bytes=4096 * _GIB, pool_allocation_bytes=1024 * _GIB,
                 pool_available_bytes=3072 * _GIB, running_vms=20,
                 functions=frozenset({("acme", "db"), ("acme", "web"), ("globex", "cache")}))


class FixedRoom:
    """A RoomReader that reads no libvirt: every agent offers the same room."""

    def read_room(self) -> HostRoom:
        return _ROOM


def now() -> datetime:
    return datetime.now(UTC)


class Sightings:
    """When each of a worker's agents first held each change; `last` wakes as the last of them does."""

    def __init__(self, agents: int) -> None:
        self._agents = agents
        self._times: dict[int, list[float]] = {}
        self._changed = threading.Condition()

    def saw(self, change: int, at: float) -> None:
        with self._changed:
            times = self._times.setdefault(change, [])
            times.append(at)
            if len(times) == self._agents:
                self._changed.notify_all()

    def last(self, change: int, timeout_seconds: float) -> float:
        """When the last agent held `change`; inf if one had not within the timeout."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._times.get(change, ())) >= self._agents, timeout_seconds)
            times = self._times.get(change, [])
            return max(times) if len(times) == self._agents else math.inf


class Agent:
    """One simulated daemon: its publisher and its subscriber, and when its view first held each change."""

    def __init__(self, name: str, *, broker: BrokerSettings, trust: PeerTrust, interval: float,
                 sightings: Sightings) -> None:  # fmt: skip
        self.name = name
        self.seen: set[int] = set()
        self.kept = 0
        self._sightings = sightings
        view = HostView(stale_after_seconds=3 * interval, on_kept=self._on_kept)
        self.subscriber = HostStateSubscriber(
            blocking_connection_factory(broker, connection_name=f"bench-view-{name}"), trust=trust, host=name,
            exchange=broker.peers_exchange, view=view, clock=now)  # fmt: skip
        self.publisher = HostStatePublisher(
            blocking_connection_factory(broker, connection_name=f"bench-state-{name}"),
            own_user=trust.own_user, host=name, exchange=broker.peers_exchange, room=FixedRoom(),
            interval_seconds=interval, switches=Switches(), clock=now)  # fmt: skip

    def _on_kept(self, heard: Heard) -> None:
        self.kept += 1
        for reason in heard.reasons:
            if reason.startswith("change "):
                change = int(reason.split()[1])
                if change not in self.seen:
                    self.seen.add(change)
                    self._sightings.saw(change, time.time())


def _status(change: int) -> HostStatus:
    return HostStatus(verdict=Verdict.MODERATE if change % 2 else Verdict.HEALTHY,
                      reasons=(f"change {change}",), quarantined=bool(change % 2))  # fmt: skip


def worker(names: list[str], everyone: list[str], url: str, exchange: str, interval: float,
           commands: Any, results: Any) -> None:  # fmt: skip
    """Runs `names`' agents; answers the controller's commands on `results`."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up only
    broker = BrokerSettings.model_validate({"url": url, "peers_exchange": exchange})
    trust = PeerTrust.shared("guest", everyone)
    sightings = Sightings(len(names))
    agents = [Agent(name, broker=broker, trust=trust, interval=interval, sightings=sightings)
              for name in names]  # fmt: skip
    for agent in agents:
        agent.subscriber.start(timeout_seconds=120)
    for agent in agents:
        agent.publisher.start(timeout_seconds=120)
    heard_all = all(agent.subscriber.view.wait_for(everyone, 60) for agent in agents)
    results.put(("ready", heard_all))
    while True:
        command, change = commands.get()
        if command == "stop":
            break
        if command == "counts":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            results.put(("counts", sum(a.publisher.published for a in agents), sum(a.kept for a in agents),
                         usage.ru_utime + usage.ru_stime))  # fmt: skip
            continue
        changed_at = None
        if command == "change":
            changed_at = time.time()
            agents[0].publisher.set_status(_status(change))
        # Woken by the last agent's view rather than polling, which would take the GIL from the agents.
        results.put(("seen", changed_at, sightings.last(change, 30)))
    for agent in agents:
        agent.publisher.close()
        agent.subscriber.close()
    results.put(("stopped", None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0, help="host_view.interval_seconds")
    parser.add_argument("--rate-seconds", type=float, default=15.0)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    exchange = f"bench-host-view-{secrets.token_hex(4)}"
    everyone = [f"agent-{index:04d}" for index in range(args.agents)]
    groups = [everyone[index::args.processes] for index in range(args.processes)]
    context = multiprocessing.get_context("spawn")
    results: Any = context.Queue()
    commands = [context.Queue() for _ in groups]
    workers = [context.Process(target=worker, args=(group, everyone, args.url, exchange, args.interval,
                                                    queue, results)) for group, queue in zip(groups, commands,
                                                                                             strict=True)]
    started = time.perf_counter()
    for process in workers:
        process.start()
    try:
        return _measure(args, workers, commands, results, started)
    finally:
        for queue in commands:
            queue.put(("stop", 0))
        for process in workers:
            process.join(30)
            if process.is_alive():
                process.terminate()
        connection = pika.BlockingConnection(pika.URLParameters(args.url))
        connection.channel().exchange_delete(exchange=exchange)
        connection.close()


def _gather(results: Any, count: int, kind: str) -> list[tuple[Any, ...]]:
    found = [results.get(timeout=300) for _ in range(count)]
    assert all(item[0] == kind for item in found), found
    return found


def _measure(args: argparse.Namespace, workers: list[Any], commands: list[Any], results: Any,
             started: float) -> int:  # fmt: skip
    ready = _gather(results, len(workers), "ready")
    print(f"agents: {args.agents} in {len(workers)} processes, interval {args.interval:g} s; every agent "
          f"heard all {args.agents}: {all(item[1] for item in ready)} "
          f"({time.perf_counter() - started:.1f} s to start)")
    rng = random.Random(args.seed)
    latencies: list[float] = []
    for change in range(1, args.changes + 1):
        time.sleep(rng.uniform(0.2, args.interval))  # at any moment of the periodic publishing
        for queue in commands[1:]:
            queue.put(("expect", change))
        commands[0].put(("change", change))
        seen = _gather(results, len(workers), "seen")
        changed_at = next(item[1] for item in seen if item[1] is not None)
        latencies.append(max(item[2] for item in seen) - changed_at)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    p50, p99 = statistics.median(latencies), quantiles[98]
    print(f"change seen by all {args.agents} agents, over {len(latencies)} changes: "
          f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
          f"(goal p99 < {GOAL_P99_SECONDS:g} s)")
    published, delivered, cpu_seconds, seconds = _rate(commands, results, args.rate_seconds)
    print(f"broker message rate at interval {args.interval:g} s over {seconds:.1f} s: "
          f"{published / seconds:.1f} published/s (expected {args.agents / args.interval:.1f}), "
          f"{delivered / seconds:.0f} delivered/s (expected {args.agents * args.agents / args.interval:.0f})")
    print(f"agents' CPU (user+system) over it: {cpu_seconds / max(delivered, 1) * 1e6:.0f} us per delivery, "
          f"{cpu_seconds / seconds / len(workers) * 100:.0f}% of a core per process")
    ok = p99 < GOAL_P99_SECONDS
    print("goal met" if ok else "GOAL MISSED")
    return 0 if ok else 1


def _rate(commands: list[Any], results: Any, seconds: float) -> tuple[int, int, float, float]:
    """States published and kept, and the worker processes' CPU seconds, over `seconds`, and the seconds."""

    def counts() -> tuple[int, int, float]:
        for queue in commands:
            queue.put(("counts", 0))
        found = _gather(results, len(commands), "counts")
        return sum(item[1] for item in found), sum(item[2] for item in found), sum(item[3] for item in found)

    first, began = counts(), time.monotonic()
    threading.Event().wait(seconds)
    last = counts()
    return last[0] - first[0], last[1] - first[1], last[2] - first[2], time.monotonic() - began


if __name__ == "__main__":
    raise SystemExit(main())
