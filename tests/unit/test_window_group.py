"""A consistency group's pre-copy during its window, over in-memory hosts: one destination and one pre-copy
for the whole group, handed over to the group's move, which then sends only what changed; a cancel removes
it all."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from evacuator.moves.cancel import cancel_moves
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveState, Phase
from tests.fakes.outcomes import RecordedOutcomes
from tests.unit.test_window_copies import DATA, MIB, POOL, T0, Hosts, _engine, _open_windows, _planned, _until


def _group(hosts: Hosts) -> tuple[str, str]:
    return (hosts.add_vm("db", group="shop", boot_order=1), hosts.add_vm("app", group="shop", boot_order=2))


def test_a_group_is_pre_copied_to_one_destination_and_its_move_sends_only_what_changed(
    tmp_path: Path,
) -> None:
    hosts, told = Hosts(), RecordedOutcomes()
    with Journal(tmp_path / "j.sqlite") as journal, capture_logs() as logs:
        engine = _engine(hosts, journal)
        db, app = _group(hosts)
        _open_windows(engine, [_planned(db, "db"), _planned(app, "app")], told)
        _until(lambda: hosts.volume("host-b", "db") == DATA and hosts.volume("host-b", "app") == DATA)
        records = [journal.get(db), journal.get(app)]
        assert all(r is not None and (r.destination, r.phase) == ("host-b", Phase.PRECOPYING)
                   for r in records)
        hosts.source.guest_write(POOL, "app.raw", 2 * MIB + 7, b"written in the window")
        final = hosts.volume("host-a", "app")
        _until(lambda: hosts.volume("host-b", "app") == final)  # a later pass sent the change
        assert engine.submit(db)  # one member's window closed: the whole group is due
        assert engine.wait_idle(5)
        engine.stop()
        moved = [journal.get(db), journal.get(app)]
    assert all(r is not None and r.state is MoveState.DONE and r.destination == "host-b" for r in moved)
    assert told.failures == []
    assert hosts.volume("host-b", "db") == DATA and hosts.volume("host-b", "app") == final
    assert hosts.volume("host-a", "db") is None and hosts.volume("host-a", "app") is None
    started = [e for e in logs if e["event"] == "window_precopy_started"]
    assert len(started) == 1 and started[0]["group"] == "shop" and started[0]["vm_uuids"] == [db, app]
    finished = [e for e in logs if e["event"] == "precopy_finished"]
    # Both disks were finished from the window's pre-copy once the group was off: nothing changed since.
    assert sorted(e["volume"] for e in finished) == ["app.raw", "db.raw"]
    assert all(e["patched_bytes"] == 0 for e in finished)


def test_cancelling_one_member_removes_the_whole_groups_pre_copy(tmp_path: Path) -> None:
    hosts = Hosts()
    with Journal(tmp_path / "j.sqlite") as journal, capture_logs() as logs:
        engine = _engine(hosts, journal)
        db, app = _group(hosts)
        _open_windows(engine, [_planned(db, "db"), _planned(app, "app")])
        _until(lambda: hosts.volume("host-b", "db") == DATA and hosts.volume("host-b", "app") == DATA)
        assert cancel_moves(journal, app, "the tenant cancelled", lambda: T0)
        _until(lambda: hosts.volume("host-b", "db") is None and hosts.volume("host-b", "app") is None)
        engine.stop()
    assert hosts.volume("host-a", "db") == DATA and hosts.volume("host-a", "app") == DATA
    removed = sorted(e["volume"] for e in logs if e["event"] == "window_precopy_removed")
    assert removed == ["app.raw", "db.raw"]
