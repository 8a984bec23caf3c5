"""The cloud-wide transfer cap on a real broker: reached and never exceeded by several hosts at once, freed
when a holder is SIGKILLed, and failing open (with a warning) when the broker cannot be reached."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pika
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from evacuator.lab.broker import _free_port
from evacuator.peers.cloud_slots import BrokerCloudCaps, BrokerClusterSlots, slot_queue
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings
from tests.fixtures.broker import BrokerJanitor

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(broker_janitor: BrokerJanitor) -> Iterator[str]:
    name = f"evacuator-test-{secrets.token_hex(3)}.peers"
    for pool in (name, f"{name}.total-slot", f"{name}.incoming-slot.hv-x", f"{name}.incoming-slot.hv-y"):
        for index in range(1, 4):
            broker_janitor.queue(slot_queue(pool, index))
    yield name


def _host_slots(settings: BrokerSettings, prefix: str, total: int, host: str) -> BrokerClusterSlots:
    connect = blocking_connection_factory(settings, connection_name=f"test-slots-{host}")
    return BrokerClusterSlots(connect, prefix=prefix, total=total, retry_seconds=0.1)


def test_three_hosts_share_two_slots_the_cap_is_reached_and_never_exceeded(
    broker_settings: BrokerSettings, prefix: str
) -> None:
    hosts = [_host_slots(broker_settings, prefix, 2, f"hv-{n}") for n in range(3)]
    lock = threading.Lock()
    holding, peak, done = 0, 0, 0

    def transfer(slots: BrokerClusterSlots, vm: str) -> None:
        nonlocal holding, peak, done
        with slots.hold(vm_uuid=vm):
            with lock:
                holding += 1
                peak = max(peak, holding)
            time.sleep(0.3)
            with lock:
                holding -= 1
                done += 1

    movers = [threading.Thread(target=transfer, args=(hosts[n % 3], f"vm-{n}")) for n in range(9)]
    for mover in movers:
        mover.start()
    for mover in movers:
        mover.join(timeout=60)
    assert done == 9 and peak == 2


def test_sources_together_keep_each_destinations_incoming_cap_and_the_total(
    broker_settings: BrokerSettings, prefix: str
) -> None:
    # Three source hosts; each destination takes 1 transfer at once from all of them, the cloud 2.
    sources = [BrokerCloudCaps(blocking_connection_factory(broker_settings, connection_name=f"src-{n}"),
                               prefix=prefix, total=2, incoming_per_host=1, retry_seconds=0.1)
               for n in range(3)]
    lock = threading.Lock()
    into: Counter[str] = Counter()
    peaks: Counter[str] = Counter()
    finished: list[str] = []

    def transfer(caps: BrokerCloudCaps, destination: str, vm: str) -> None:
        with caps.hold(destination=destination, vm_uuid=vm):
            with lock:
                into[destination] += 1
                peaks[destination] = max(peaks[destination], into[destination])
                peaks["total"] = max(peaks["total"], sum(into.values()))
            time.sleep(0.25)
            with lock:
                into[destination] -= 1
                finished.append(vm)

    movers = [threading.Thread(target=transfer, args=(sources[n % 3], ("hv-x", "hv-y")[n % 2], f"vm-{n}"))
              for n in range(8)]
    for mover in movers:
        mover.start()
    for mover in movers:
        mover.join(timeout=60)
    assert len(finished) == 8
    # Each destination got transfers one at a time, and the two ran side by side.
    assert peaks == Counter({"hv-x": 1, "hv-y": 1, "total": 2})


def test_a_host_killed_while_holding_its_slot_frees_it(broker_settings: BrokerSettings, prefix: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            import structlog
            structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: "held"
            from pydantic import SecretStr
            from evacuator.peers.cloud_slots import BrokerClusterSlots
            from notifiers.connection import blocking_connection_factory
            from notifiers.settings import BrokerSettings
            settings = BrokerSettings(url=SecretStr({broker_settings.url.get_secret_value()!r}))
            slots = BrokerClusterSlots(blocking_connection_factory(settings, connection_name="doomed"),
                                       prefix={prefix!r}, total=1)
            with slots.hold(vm_uuid="doomed"):
                print("held", flush=True)
                time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        got = threading.Event()

        def wait_for_slot() -> None:
            with _host_slots(broker_settings, prefix, 1, "survivor").hold(vm_uuid="next"):
                got.set()

        waiter = threading.Thread(target=wait_for_slot)
        waiter.start()
        assert not got.wait(1.5)  # the only slot is held by the other host
        holder.kill()
        killed_at = time.monotonic()
        assert got.wait(15), "the dead host's slot was never freed"
        waiter.join(timeout=15)
        print(f"\nslot free {time.monotonic() - killed_at:.2f} s after its holder was SIGKILLed")
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_without_a_broker_a_transfer_goes_ahead_and_says_so() -> None:
    unreachable = BrokerSettings(url=SecretStr(f"amqp://guest:guest@127.0.0.1:{_free_port()}/%2F"))
    slots = BrokerClusterSlots(blocking_connection_factory(unreachable, connection_name="nowhere"),
                               prefix="evacuator.peers", total=1)
    ran = False
    with capture_logs() as logs, slots.hold(vm_uuid="urgent"):
        ran = True
    assert ran
    assert [e["vm_uuid"] for e in logs if e["event"] == "cluster_slot_unavailable"] == ["urgent"]


def test_a_slot_queue_the_broker_refuses_fails_open_and_says_so(
    broker_settings: BrokerSettings, prefix: str, broker_janitor: BrokerJanitor
) -> None:
    # Slot 1 exists with other properties (not durable): declaring it is refused (406), which is no "slot
    # taken": the transfer must not wait forever for it.
    with pika.BlockingConnection(pika.URLParameters(broker_settings.url.get_secret_value())) as connection:
        connection.channel().queue_declare(queue=slot_queue(prefix, 1), durable=False)
    slots = _host_slots(broker_settings, prefix, 1, "hv-odd")
    began = time.monotonic()
    with capture_logs() as logs, slots.hold(vm_uuid="vm-odd"):
        held_after_seconds = time.monotonic() - began
    assert held_after_seconds < 10
    [event] = [e for e in logs if e["event"] == "cluster_slot_unavailable"]
    assert event["vm_uuid"] == "vm-odd" and "PRECONDITION_FAILED" in str(event["error"])
