"""What a move cost its VM (issue 22, item 3): read from the journal's history rows, logged for the downtime
histogram, and told to the tenant in vm_evacuated as the published schema describes it."""

from __future__ import annotations

import json
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from evacuator.errors import JournalError
from evacuator.incident.notices import TenantNotifier
from evacuator.incident.notices_told import measured_cost
from evacuator.moves.journal import Journal, MoveCost
from evacuator.moves.state import MoveRecord, MoveState, Phase
from notifiers.errors import MalformedNotice
from notifiers.messages import Notice, VmEvacuated, encode, parse_notice
from tests.unit.published_schemas import errors, file_validator

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
S, P = MoveState, Phase
# One history row: state, phase, step, destination, seconds after T0, bytes_copied.
Row = tuple[MoveState, Phase, str | None, str | None, float, int | None]

_COLD: list[Row] = [
    (S.PLANNED, P.ENTERED, None, None, 0, None),
    (S.QUIESCING, P.STARTED, "quiesce", "host-b", 1, None),
    (S.QUIESCING, P.FINISHED, "quiesce", "host-b", 3, None),
    (S.COPYING, P.FINISHED, "copy_disks", "host-b", 10, None),
    (S.DEFINING, P.FINISHED, "define", "host-b", 11, None),
    (S.STARTING, P.STARTED, "start", "host-b", 11, None),
    (S.STARTING, P.FINISHED, "start", "host-b", 12.5, None),
    (S.VERIFYING, P.FINISHED, "verify", "host-b", 13, None),
    (S.CLEANING, P.FINISHED, "clean_up", "host-b", 14, None),
    (S.DONE, P.FINISHED, "clean_up", "host-b", 15, 4096),
]
_LIVE: list[Row] = [
    (S.PLANNED, P.ENTERED, None, None, 0, None),
    (S.COPYING, P.STARTED, "copy_disks", "host-b", 1, None),
    (S.COPYING, P.FINISHED, "copy_disks", "host-b", 20, None),
    (S.VERIFYING, P.FINISHED, "verify", "host-b", 21, None),
    (S.CLEANING, P.FINISHED, "clean_up", "host-b", 22, None),
    (S.DONE, P.FINISHED, "clean_up", "host-b", 23, None),  # libvirt copied the disks: not counted
]
# Started on host-b, failed its check there, rolled back (not restarted on the source: another host is
# tried) and started on host-c: off since the first quiesce, running since host-c's start.
_ROLLED_BACK: list[Row] = [
    (S.PLANNED, P.ENTERED, None, None, 0, None),
    (S.QUIESCING, P.FINISHED, "quiesce", "host-b", 2, None),
    (S.STARTING, P.FINISHED, "start", "host-b", 5, None),
    (S.VERIFYING, P.FAILED, "verify", "host-b", 6, None),
    (S.ROLLING_BACK, P.STARTED, None, "host-b", 7, None),
    (S.WAITING, P.DUE, None, None, 8, None),
    (S.QUIESCING, P.FINISHED, "quiesce", "host-c", 9, None),  # nothing to do: the guest is off
    (S.STARTING, P.FINISHED, "start", "host-c", 14, None),
    (S.DONE, P.FINISHED, "clean_up", "host-c", 16, 8192),
]
# Killed after the start; the resumed move replays the steps, which find them done and are journaled later.
_RESUMED: list[Row] = [
    (S.PLANNED, P.ENTERED, None, None, 0, None),
    (S.QUIESCING, P.FINISHED, "quiesce", "host-b", 2, None),
    (S.STARTING, P.FINISHED, "start", "host-b", 6, None),
    (S.STARTING, P.FINISHED, "quiesce", "host-b", 30, None),
    (S.STARTING, P.FINISHED, "start", "host-b", 31, None),
    (S.DONE, P.FINISHED, "clean_up", "host-b", 33, 4096),
]
_LATER = [(state, phase, step, dest, at + 100, None if copied is None else 2 * copied)
          for state, phase, step, dest, at, copied in _ROLLED_BACK]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "running", "expected"),
    [
        pytest.param(_COLD, True, MoveCost(downtime_seconds=9.5, bytes_moved=4096), id="cold"),
        pytest.param(_COLD, False, MoveCost(downtime_seconds=None, bytes_moved=4096), id="vm-was-off"),
        pytest.param(_LIVE, True, MoveCost(downtime_seconds=None, bytes_moved=None), id="live"),
        pytest.param(_ROLLED_BACK, True, MoveCost(downtime_seconds=12, bytes_moved=8192), id="rolled-back"),
        pytest.param(_RESUMED, True, MoveCost(downtime_seconds=4, bytes_moved=4096), id="resumed"),
        pytest.param([*_COLD, *_LATER], True, MoveCost(downtime_seconds=12, bytes_moved=16384),
                     id="the-latest-of-two-moves"),
        pytest.param(_COLD[:5], True, MoveCost(downtime_seconds=None, bytes_moved=None), id="not-that-far"),
        pytest.param([], True, MoveCost(downtime_seconds=None, bytes_moved=None), id="never-journaled"),
    ],
)  # fmt: skip
def test_the_journal_reads_a_moves_cost_from_its_history(
    tmp_path: Path, rows: list[Row], running: bool, expected: MoveCost
) -> None:
    with Journal(tmp_path / "journal.sqlite") as journal:
        _journal(journal, rows, running=running)
        assert journal.cost(VM) == expected


def test_the_service_logs_the_cost_it_read_for_the_metrics() -> None:
    cost = MoveCost(downtime_seconds=9.5, bytes_moved=4096)
    with capture_logs() as logs:
        assert measured_cost(FakeCosts(cost), _record()) == cost
    assert [e for e in logs if e["event"] == "move_cost_measured"] == [
        {"event": "move_cost_measured", "log_level": "info", "vm_uuid": VM, "tenant": "acme",
         "downtime_seconds": 9.5, "bytes_moved": 4096}]  # fmt: skip


def test_a_cost_that_cannot_be_read_is_not_measured_and_the_tenant_is_still_told() -> None:
    with capture_logs() as logs:
        cost = measured_cost(FakeCosts(JournalError("journal.sqlite: disk I/O error")), _record())
    assert cost == MoveCost(downtime_seconds=None, bytes_moved=None)
    assert [e["event"] for e in logs] == ["move_cost_unread", "move_cost_measured"]


def test_without_a_journal_to_read_nothing_is_measured() -> None:
    with capture_logs() as logs:
        assert measured_cost(None, _record()) == MoveCost(downtime_seconds=None, bytes_moved=None)
    assert logs == []


@pytest.mark.parametrize(
    ("downtime_seconds", "bytes_moved"), [(9.5, 4096), (None, 4096), (None, None)],
    ids=["cold", "vm-was-off", "live"],
)  # fmt: skip
def test_vm_evacuated_carries_the_cost_as_its_published_schema_says(
    downtime_seconds: float | None, bytes_moved: int | None
) -> None:
    sink = Sink()
    notifier = TenantNotifier(publisher=sink, host="hv1", replies_exchange="evacuator.replies",
                              clock=lambda: T0)  # fmt: skip
    notifier.vm_evacuated(tenant="acme", vm_uuid=VM, vm_name="web-1", to_host="hv2",
                          downtime_seconds=downtime_seconds, bytes_moved=bytes_moved)  # fmt: skip
    (notice,) = sink.notices
    body = json.loads(encode(notice))
    # Written even when null: the schema requires every field the service always writes.
    assert (body["downtime_seconds"], body["bytes_moved"]) == (downtime_seconds, bytes_moved)
    assert errors(file_validator("VmEvacuated"), body) == []


def test_a_vm_evacuated_from_a_service_before_the_cost_still_parses() -> None:
    body = _body()
    del body["downtime_seconds"], body["bytes_moved"]
    parsed = parse_notice(json.dumps(body).encode())
    assert isinstance(parsed, VmEvacuated) and (parsed.downtime_seconds, parsed.bytes_moved) == (None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [("downtime_seconds", -1), ("downtime_seconds", "9.5"), ("bytes_moved", -1), ("bytes_moved", 4096.5),
     ("bytes_moved", True)],
)  # fmt: skip
def test_a_cost_that_is_no_count_is_refused_by_the_model_and_the_schema(field: str, value: object) -> None:
    body = {**_body(), field: value}
    assert errors(file_validator("VmEvacuated"), body)
    with pytest.raises(MalformedNotice, match=field):
        parse_notice(json.dumps(body).encode())


class FakeCosts:
    """The MoveCosts fake: answers one cost, or raises one error."""

    def __init__(self, answer: MoveCost | Exception) -> None:
        self.answer = answer

    def cost(self, vm_uuid: str) -> MoveCost:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Sink:
    """A NoticeSink keeping each notice, confirmed at once."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def ensure_tenant_queue(self, tenant: str) -> Future[None]:
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def publish(self, tenant: str, host: str, notice: Notice) -> Future[datetime]:
        self.notices.append(notice)
        done: Future[datetime] = Future()
        done.set_result(T0)
        return done


def _body() -> dict[str, object]:
    """A vm_evacuated as the service writes it, with no cost measured."""
    notice = VmEvacuated(tenant="acme", host="hv1", from_host="hv1", to_host="hv2", vm_uuid=VM,
                         vm_name="web-1", at=T0)  # fmt: skip
    body: dict[str, object] = json.loads(encode(notice))
    return body


def _record(*, running: bool = True) -> MoveRecord:
    return MoveRecord(vm_uuid=VM, vm_name="web-1", tenant="acme", source="host-a", destination=None,
                      state=S.PLANNED, phase=P.ENTERED, step=None, start_on_destination=running,
                      may_restart_on_source=True, deadline=T0, attempt=0, error=None,
                      updated_at=T0)  # fmt: skip


def _journal(journal: Journal, rows: list[Row], *, running: bool) -> None:
    record = _record(running=running)
    for state, phase, step, destination, seconds, copied in rows:
        record = journal.advance(record, state, phase, T0 + timedelta(seconds=seconds), step=step,
                                 destination=destination, bytes_copied=copied)  # fmt: skip
