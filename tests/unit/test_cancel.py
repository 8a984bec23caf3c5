"""evacuator cancel over a real journal and the recording notifier: only pending moves, groups whole."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from evacuator.commands.cancel import cancel_moves, tell_tenants
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveRecord, MoveState, Phase
from tests.fakes.notifier import RecordingNotifier

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)


def record(uuid: str, state: MoveState, group: str | None = None, tenant: str = "acme") -> MoveRecord:
    return MoveRecord(
        vm_uuid=uuid, vm_name=uuid, tenant=tenant, source="host-a", destination=None, state=state,
        phase=Phase.ENTERED, step=None, start_on_destination=None, may_restart_on_source=True, deadline=T0,
        attempt=0, error=None, updated_at=T0, group=group,
    )  # fmt: skip


def test_a_waiting_move_is_cancelled_and_its_tenant_told(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.put(record("u1", MoveState.WAITING))
        cancelled = cancel_moves(journal, "U1", "operator: host repaired", lambda: T0)
        assert [(r.vm_uuid, r.state) for r in cancelled] == [("u1", MoveState.CANCELLED)]
        assert cancel_moves(journal, "u1", "again", lambda: T0) == ()
    notifier = RecordingNotifier(clock=lambda: T0)
    tell_tenants(notifier, cancelled, "operator: host repaired", 1)
    assert notifier.sent == [("evacuation_cancelled", "acme",
                              {"vm_uuids": ("u1",), "reason": "operator: host repaired"})]


def test_a_move_that_started_quiescing_cannot_be_cancelled(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        journal.put(record("u1", MoveState.PLANNED))
        journal.put(journal.advance(record("u1", MoveState.PLANNED), MoveState.QUIESCING, Phase.STARTED, T0))
        assert cancel_moves(journal, "u1", "too late", lambda: T0) == ()
        assert cancel_moves(journal, "unknown", "never planned", lambda: T0) == ()


def test_cancelling_one_member_cancels_its_whole_group(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        for uuid in ("a", "b"):
            journal.put(record(uuid, MoveState.NOTIFIED, group="shop"))
        journal.put(record("c", MoveState.WAITING))
        cancelled = cancel_moves(journal, "a", "why not", lambda: T0)
        assert sorted(r.vm_uuid for r in cancelled) == ["a", "b"]
        other = journal.get("c")
        assert other is not None and other.state is MoveState.WAITING
