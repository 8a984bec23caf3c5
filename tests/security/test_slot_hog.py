"""Attack: a host holds every cloud-wide transfer slot and never lets go (issue 18), on the real broker.

Before: a move waited for a slot without end, so one host (compromised, or wedged with its connections
alive) consuming every slot queue stalled every other host's evacuation, a dying host's included. Now no
wait is unbounded: a move goes ahead without its slot after `max_wait_seconds` (cluster_slot_wait_expired),
a failed host's move (urgent) after URGENT_WAIT_SECONDS, and the slot queues live in the peers vhost, where
no tenant can reach them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from evacuator.peers.cloud_slots import URGENT_WAIT_SECONDS, BrokerCloudCaps, slot_queue, total_prefix
from tests.security.cloud import Cloud

pytestmark = pytest.mark.integration

TOTAL = 2
CLOUD_DESTINATION = "hv-dest"


@pytest.fixture
def hog(cloud: Cloud) -> Iterator[None]:
    """mallory's connection, exclusive consumer of every total-slot queue, for as long as the test runs (the
    module's peers vhost is its own, so these are the only slot queues of its cloud)."""
    prefix = total_prefix(cloud.mallory.settings.peers_exchange)
    connection = cloud.mallory.connect("hog")()
    channel = connection.channel()
    for index in range(1, TOTAL + 1):
        queue = slot_queue(prefix, index)
        channel.queue_declare(queue=queue, durable=True)
        channel.basic_consume(queue=queue, on_message_callback=lambda *_: None, exclusive=True)
    try:
        yield
    finally:
        for index in range(1, TOTAL + 1):
            channel.queue_delete(queue=slot_queue(prefix, index))
        connection.close()


def _caps(cloud: Cloud, *, max_wait_seconds: float) -> BrokerCloudCaps:
    return BrokerCloudCaps(
        cloud.a.connect("slots"), prefix=cloud.a.settings.peers_exchange, total=TOTAL, incoming_per_host=None,
        retry_seconds=0.2, max_wait_seconds=max_wait_seconds,
    )  # fmt: skip


def _held_after(caps: BrokerCloudCaps, *, urgent: bool) -> float:
    began = time.monotonic()
    with caps.hold(destination=CLOUD_DESTINATION, vm_uuid=str(uuid.uuid4()), urgent=urgent):
        return time.monotonic() - began


@pytest.mark.usefixtures("hog")
def test_a_move_goes_ahead_after_a_bounded_wait_when_a_host_holds_every_slot(cloud: Cloud) -> None:
    with capture_logs() as logs:
        waited = _held_after(_caps(cloud, max_wait_seconds=3.0), urgent=False)
    assert 3.0 <= waited < 10.0
    [expired] = _events(logs, "cluster_slot_wait_expired")
    assert expired["waited_seconds"] == 3.0
    assert not _events(logs, "cluster_slot_unavailable")  # the broker answered: it was the hog, not an outage


@pytest.mark.usefixtures("hog")
def test_a_failed_hosts_move_waits_only_a_moment(cloud: Cloud) -> None:
    with capture_logs() as logs:
        waited = _held_after(_caps(cloud, max_wait_seconds=300.0), urgent=True)
    assert URGENT_WAIT_SECONDS <= waited < URGENT_WAIT_SECONDS + 5.0
    assert len(_events(logs, "cluster_slot_wait_expired")) == 1


def test_the_control_an_unbounded_wait_stalls_while_the_hog_holds_and_proceeds_when_it_lets_go(
    cloud: Cloud, hog: None
) -> None:
    # As before: no bound. The move is still waiting long after the bound above, and holds its slot at once
    # when the hog goes (so the wait above was the hog's doing, and a freed slot is taken).
    caps = _caps(cloud, max_wait_seconds=3600.0)
    done = threading.Event()

    def move() -> None:
        _held_after(caps, urgent=False)
        done.set()

    holding = threading.Thread(target=move, daemon=True)
    holding.start()
    assert not done.wait(6.0)
    _release_one_slot(cloud)
    assert done.wait(15.0)


def _release_one_slot(cloud: Cloud) -> None:
    prefix = total_prefix(cloud.mallory.settings.peers_exchange)
    connection = cloud.mallory.connect("release")()
    channel = connection.channel()
    channel.queue_delete(queue=slot_queue(prefix, 1))  # its exclusive consumer is cancelled with it
    connection.close()


def _events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [event for event in logs if event["event"] == name]
