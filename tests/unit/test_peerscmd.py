"""`evacuator peers`' report (pure); the broker side is tests/integration/test_peers_cli.py."""

from __future__ import annotations

from evacuator.commands.peers import CloudStatus, HostStatus, format_status


def test_peers_report_says_when_caps_are_not_counted_on_the_broker() -> None:
    status = CloudStatus(hosts=(
        HostStatus(host="hv-01", digests_answered=True, incoming_slots_held=None, incoming_slots=None),
        HostStatus(host="hv-02-long", digests_answered=False, incoming_slots_held=None, incoming_slots=None),
    ), total_slots_held=None, total_slots=None)  # fmt: skip
    assert format_status(status).splitlines() == [
        "host        digest daemon  incoming transfer slots",
        "hv-01       answers        not counted",
        "hv-02-long  absent         not counted",
        "cloud-wide transfer slots: not counted",
    ]
