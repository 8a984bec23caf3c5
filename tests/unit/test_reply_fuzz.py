"""Fuzz: 10,000 random deliveries through the whole reply path; only documented rejections come out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from evacuator.hypervisor.facts import VmFacts
from evacuator.incident.reply_policy import (
    Expedite,
    NewDeadline,
    PendingEvacuation,
    Reject,
    RejectCode,
    ReplyPolicy,
    StoreWindow,
    decide_delivery,
)
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


def _mostly(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """A draw from `good` four times in five: hypothesis's one_of and sampled_from do not weight branches."""
    return draw(good) if draw(st.integers(0, 4)) > 0 else draw(bad)


_any_seconds = st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8) | st.none() | _json
_any_uuid = st.uuids().map(str) | st.text(max_size=40) | st.integers() | _json


@st.composite
def _reply_document(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-shaped replies with random values, so the policy itself gets fuzzed too."""
    document: dict[str, Any] = {
        "schema_version": _mostly(draw, st.just(1), st.sampled_from([2, 0, "1", True, None, 1.0, []])),
        "type": _mostly(draw, st.sampled_from(["ready", "postpone", "register"]), st.text(max_size=10)),
        "vm_uuid": _mostly(draw, st.sampled_from(VMS), _any_uuid),
    }
    kind = document["type"]
    rarely = draw(st.integers(0, 5)) == 0  # now and then the fields of another type, or none
    if (kind in ("ready", "postpone")) != rarely and draw(st.booleans()):
        document["event_id"] = _mostly(draw, st.sampled_from([EVENT, None]), _any_uuid)
    if (kind == "postpone") != rarely:
        document["postpone_seconds"] = _mostly(draw, st.integers(0, 10_000), _any_seconds)
    if (kind == "register") != rarely:
        document["window_seconds"] = _mostly(draw, st.integers(0, 10_000), _any_seconds)
    if draw(st.integers(0, 9)) == 0:
        document[draw(st.text(max_size=8))] = draw(_json)
    if draw(st.integers(0, 9)) == 0:
        for key in draw(st.lists(st.sampled_from(sorted(document)), max_size=2)):
            document.pop(key, None)
    return document


@st.composite
def _sender(draw: st.DrawFn) -> tuple[str | None, str]:
    """(user_id, routing_key): mostly a real tenant on its own key, else anything."""
    if draw(st.integers(0, 4)) > 0:
        user = draw(st.sampled_from(["acme", "bravo"]))
        return user, f"{user}.hv1"
    user_id = draw(st.none() | st.sampled_from(TENANTS) | st.text(max_size=20))
    routing_key = draw(st.sampled_from(["acme.hv1", "bravo.hv1", "acme.hv2", "", "#", "acme.hv1.x"]))
    return user_id, draw(st.just(routing_key) | st.text(max_size=20))


@st.composite
def _body(draw: st.DrawFn) -> bytes:
    """Reply documents mostly; else random bytes or any JSON value."""
    noise = st.binary(max_size=256) | _json.map(lambda value: json.dumps(value).encode())
    return _mostly(draw, _reply_document().map(lambda document: json.dumps(document).encode()), noise)  # type: ignore[no-any-return]


_pending = st.builds(
    PendingEvacuation,
    event_id=st.sampled_from([EVENT, None]),
    severity=st.sampled_from(list(Severity)),
    opened_at=st.just(T0),
    planned_deadline=st.integers(-100, 4000).map(lambda s: T0 + timedelta(seconds=s)),
    deadline=st.integers(-100, 8000).map(lambda s: T0 + timedelta(seconds=s)),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(body=_body(), sender=_sender(), pending=st.dictionaries(st.sampled_from(VMS), _pending, min_size=1))
def test_random_deliveries_never_crash_the_reply_path(
    body: bytes, sender: tuple[str | None, str], pending: dict[str, PendingEvacuation]
) -> None:
    user_id, routing_key = sender
    decision = decide_delivery(
        host="hv1", user_id=user_id, routing_key=routing_key, body=body, message_id=None,
        vms=FACTS, pending=pending, now=T0, policy=POLICY,
    )  # fmt: skip
    event(decision.code.value if isinstance(decision, Reject) else type(decision).__name__)
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
