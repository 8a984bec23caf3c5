"""Fuzz: 10,000 random deliveries through the whole reply path; only documented rejections come out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evacuator.replies import (
    Expedite,
    NewDeadline,
    PendingEvacuation,
    Reject,
    RejectCode,
    ReplyPolicy,
    StoreWindow,
    decide_delivery,
)
from evacuator.vmmeta import VmFacts
from monitors.verdicts import Severity

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
VMS = ("0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01", "1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12")
EVENT = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
POLICY = ReplyPolicy(max_postpone_seconds=1800, severe_hard_limit_seconds=3600, max_window_seconds=3600)
TENANTS = ("acme", "bravo", "", "acme.hv1", "Acme", "ACME", "a" * 300)
FACTS = {VMS[0]: VmFacts(tenant="acme", window_seconds=60), VMS[1]: VmFacts(tenant="bravo")}
EXAMPLES = 10_000

_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_uuidish = st.sampled_from(VMS) | st.uuids().map(str) | st.text(max_size=40) | st.integers()
_seconds = st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=8) | st.none()


@st.composite
def _reply_document(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-shaped replies with random values, so the policy itself gets fuzzed too."""
    document: dict[str, Any] = {
        "schema_version": draw(st.sampled_from([1, 1, 1, 2, 0, "1", True, None, 1.0])),
        "type": draw(st.sampled_from(["ready", "postpone", "register", "READY", "", "notice"])),
        "vm_uuid": draw(_uuidish),
    }
    if draw(st.booleans()):
        document["event_id"] = draw(st.sampled_from([EVENT]) | st.uuids().map(str) | st.text(max_size=40))
    if draw(st.booleans()):
        document["postpone_seconds"] = draw(_seconds)
    if draw(st.booleans()):
        document["window_seconds"] = draw(_seconds)
    if draw(st.integers(0, 9)) == 0:
        document[draw(st.text(max_size=8))] = draw(_json)
    for key in draw(st.lists(st.sampled_from(sorted(document)), max_size=2)):
        document.pop(key, None)
    return document


_body = (
    st.binary(max_size=256)
    | _json.map(lambda value: json.dumps(value).encode())
    | _reply_document().map(lambda document: json.dumps(document).encode())
    | _reply_document().map(lambda document: json.dumps(document).encode())
)
_pending = st.builds(
    PendingEvacuation,
    event_id=st.sampled_from([EVENT, None]),
    severity=st.sampled_from(list(Severity)),
    opened_at=st.just(T0),
    planned_deadline=st.integers(-100, 4000).map(lambda s: T0 + timedelta(seconds=s)),
    deadline=st.integers(-100, 8000).map(lambda s: T0 + timedelta(seconds=s)),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    body=_body,
    user_id=st.none() | st.sampled_from(TENANTS) | st.text(max_size=20),
    routing_key=st.sampled_from(["acme.hv1", "bravo.hv1", "acme.hv2", "", "#", "acme.hv1.x"])
    | st.text(max_size=20),
    pending=st.dictionaries(st.sampled_from(VMS), _pending, max_size=2),
)  # fmt: skip
def test_random_deliveries_never_crash_the_reply_path(
    body: bytes, user_id: str | None, routing_key: str, pending: dict[str, PendingEvacuation]
) -> None:
    decision = decide_delivery(
        host="hv1", user_id=user_id, routing_key=routing_key, body=body, message_id=None,
        vms=FACTS, pending=pending, now=T0, policy=POLICY,
    )  # fmt: skip
    if isinstance(decision, Reject):
        assert decision.code in RejectCode and decision.reason
        return
    # Anything accepted came from the owner, on its own routing key, about its own VM.
    assert user_id is not None and routing_key == f"{user_id}.hv1"
    assert FACTS[decision.vm_uuid].tenant == user_id
    if isinstance(decision, NewDeadline):
        current = pending[decision.vm_uuid]
        assert current.severity is not Severity.FAILED
        assert current.deadline < decision.deadline <= current.planned_deadline + timedelta(seconds=1800)
        assert decision.deadline <= T0 + timedelta(seconds=3600)
        assert 0 < decision.granted_seconds <= decision.requested_seconds
    elif isinstance(decision, StoreWindow):
        assert 0 <= decision.window_seconds <= POLICY.max_window_seconds
    else:
        assert isinstance(decision, Expedite) and pending[decision.vm_uuid].deadline > T0
