"""The blast-radius guards on the real broker, with simulated hosts (issue 20): eleven hosts, each with its
own host view (publisher and subscriber on the broker) and its own guard (moves/guard.py over the broker's
permits, lock and pause: peers/guard_broker.py). Ten go sick at once with the 25% guard: at most two evacuate
at a time, the rest are held and told, all finish; a failed host jumps the queue; `evacuator pause` stops
every new move within a second and `evacuator resume` lets them go on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from evacuator.cli import main
from evacuator.hypervisor.room import HostRoom
from evacuator.moves.guard import CloudGuard
from evacuator.peers.guard_broker import BrokerGuardState, lock_prefix, paused_queue, permit_prefix
from evacuator.peers.state_publisher import HostStatus, Switches
from evacuator.placement.guards import GuardPolicy, Hold
from evacuator.placement.model import Verdict
from evacuator.settings import HostViewSettings
from evacuator.wiring.host_view import HostViewParts, build_host_view
from evacuator.wiring.peers import peers_connection
from notifiers.settings import BrokerSettings
from tests.fixtures.broker import BrokerJanitor, lab_trust

pytestmark = pytest.mark.integration

GIB = 1 << 30
SICK = tuple(f"sick-{i}" for i in range(10))
HOSTS = (*SICK, "spare")
POLICY = GuardPolicy(max_evacuating_share=0.25, min_free_share=0.10, min_start_spacing_seconds=0)
MOVES_PER_HOST = 3
MOVE_SECONDS = 0.6


class _Room:
    """A host's room without libvirt: the spare has room for everyone, a sick host runs a few small VMs."""

    def __init__(self, spare: bool) -> None:
        self._free = 900 * GIB if spare else 990 * GIB

    def read_room(self) -> HostRoom:
        return HostRoom(memory_capacity_bytes=1000 * GIB, memory_free_bytes=self._free, vcpus_capacity=256,
                        vcpus_free=200, pool_capacity_bytes=10_000 * GIB, pool_allocation_bytes=100 * GIB,
                        pool_available_bytes=9_000 * GIB, running_vms=4)  # fmt: skip


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Ledger:
    """What the simulated hosts did, with the moments it happened (time.monotonic)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    active: set[str] = field(default_factory=set)
    most_active: int = 0
    admitted: list[tuple[float, str]] = field(default_factory=list)
    held: dict[str, list[str]] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)


@contextmanager
def _host(name: str, broker: BrokerSettings) -> Iterator[tuple[HostViewParts, CloudGuard]]:
    parts = build_host_view(host=name, broker=broker, trust=lab_trust(broker, HOSTS),
                            room=_Room(name == "spare"), view_settings=HostViewSettings(interval_seconds=1.0),
                            switches=Switches(), clock=utc_now)  # fmt: skip
    parts.start()
    verdict = Verdict.HEALTHY if name == "spare" else Verdict.SEVERE
    parts.publisher.set_status(HostStatus(verdict=verdict))
    guard = CloudGuard(host=name, policy=POLICY,
                       state=BrokerGuardState(peers_connection(broker, f"test-guard-{name}"),
                                              exchange=broker.peers_exchange),
                       view=parts.view, announce=parts.publisher.set_evacuating, clock=utc_now,
                       poll_seconds=0.1)  # fmt: skip
    try:
        yield parts, guard
    finally:
        guard.end()
        parts.close()


def _evacuate(name: str, guard: CloudGuard, ledger: Ledger, *, failed: bool) -> None:
    """A host's incident: MOVES_PER_HOST moves, each through the gate, then the end. `ledger.active`
    counts the severe hosts evacuating (a failed one goes whatever the count)."""
    try:
        guard.begin(failed=failed, on_hold=lambda hold: _told(ledger, name, hold))
        for _ in range(MOVES_PER_HOST):
            assert guard.admit(lambda: False)
            with ledger.lock:
                ledger.admitted.append((time.monotonic(), name))
                if not failed:
                    ledger.active.add(name)
                    ledger.most_active = max(ledger.most_active, len(ledger.active))
            time.sleep(MOVE_SECONDS)
        guard.end()
        with ledger.lock:
            ledger.active.discard(name)
            ledger.finished.add(name)
    except BaseException as exc:  # reported on the test's thread
        ledger.errors.append(exc)


def _told(ledger: Ledger, name: str, hold: Hold) -> None:
    with ledger.lock:
        ledger.held.setdefault(name, []).append(str(hold.cause))


def _config(tmp_path: Path, broker: BrokerSettings) -> Path:
    path = tmp_path / "evacuator.yaml"
    path.write_text(yaml.safe_dump({
        "host": {"name": "sick-0"},
        "peers": [{"name": "spare", "libvirt_uri": "qemu+tcp://127.0.0.1/system"}],
        "data_channel": {"enabled": False},
        "broker": {"url": broker.url.get_secret_value(), "notices_exchange": broker.notices_exchange,
                   "replies_exchange": broker.replies_exchange, "peers_exchange": broker.peers_exchange},
    }))  # fmt: skip
    return path


def test_ten_sick_hosts_evacuate_two_at_a_time_a_failed_one_jumps_and_a_pause_stops_them(
    tmp_path: Path, broker_settings: BrokerSettings, broker_url: str,
) -> None:  # fmt: skip
    janitor = BrokerJanitor(broker_url)
    exchange = broker_settings.peers_exchange
    for queue in (paused_queue(exchange), f"{lock_prefix(exchange)}.1",
                  *(f"{permit_prefix(exchange)}.{k}" for k in range(1, 4))):  # fmt: skip
        janitor.queue(queue)
    ledger = Ledger()
    config = _config(tmp_path, broker_settings)
    try:
        with ExitStack() as stack:
            hosts = {name: stack.enter_context(_host(name, broker_settings)) for name in HOSTS}
            for parts, _ in hosts.values():
                assert parts.view.wait_for(HOSTS, 30), "every host heard every other"
            severe = [threading.Thread(target=_evacuate, args=(name, hosts[name][1], ledger),
                                       kwargs={"failed": False}) for name in SICK[:9]]
            for thread in severe:
                thread.start()
            deadline = time.monotonic() + 30
            while len(ledger.held) < 7:  # two go, seven are held and told
                assert time.monotonic() < deadline, f"seven hosts held back: {ledger.held}"
                time.sleep(0.05)
            assert all(causes[0] == "too_many_evacuating" for causes in ledger.held.values()), ledger.held

            # A failed host jumps the queue: admitted at once though both permits are held.
            asked = time.monotonic()
            failed = threading.Thread(target=_evacuate, args=(SICK[9], hosts[SICK[9]][1], ledger),
                                      kwargs={"failed": True})  # fmt: skip
            failed.start()
            deadline = time.monotonic() + 5
            while not any(name == SICK[9] for _, name in ledger.admitted):
                assert time.monotonic() < deadline, "the failed host went ahead"
                time.sleep(0.02)
            jumped = next(t for t, name in ledger.admitted if name == SICK[9]) - asked
            assert jumped < 1.0, f"the failed host waited {jumped:.2f} s"

            # Pause: no move starts from a second after it until resume.
            assert main(["pause", "--config", str(config), "--reason", "detector under suspicion"]) == 0
            paused_at = time.monotonic()
            time.sleep(2.5)
            started_late = [(round(t - paused_at, 2), name) for t, name in ledger.admitted
                            if t > paused_at + 1.0]  # fmt: skip
            assert started_late == [], f"moves started while paused: {started_late}"
            assert any("paused" in causes for causes in ledger.held.values()), "the held hosts were told why"
            assert main(["resume", "--config", str(config)]) == 0

            for thread in [*severe, failed]:
                thread.join(120)
            assert ledger.errors == [] and not any(t.is_alive() for t in [*severe, failed]), ledger.errors
    finally:
        janitor.clean()
    assert ledger.finished == set(SICK), "every sick host finished"
    assert ledger.most_active <= 2, f"{ledger.most_active} severe hosts evacuated at once"
    print(f"failed host admitted {jumped * 1000:.0f} ms after asking; {len(ledger.held)} hosts held and told")
