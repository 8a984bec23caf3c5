"""A window's pre-copy handed to its move: the destination digests its copy while the guest shuts down, and
that digest counts only for a copy the last pass (once the guest is off) wrote nothing to; any other copy
is digested again, and the move stays exact."""

from __future__ import annotations

import time
from pathlib import Path

from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveState
from tests.unit.test_window_copies import DATA, MIB, POOL, Hosts, _engine, _open_windows, _planned, _until


def _digests_taken(hosts: Hosts) -> int:
    """The fake digests a volume by reading it whole (read_volume): nothing else of a move reads the copy."""
    return sum(1 for call in hosts.by_name["host-b"].calls if call.startswith("read_volume "))


def _moved(tmp_path: Path, hosts: Hosts, *, write_during_the_shutdown_pass: bool,
           shutdown_timeout_seconds: float = 1) -> bytes | None:
    """Moves a VM pre-copied in its window; returns the source's final content."""
    with Journal(tmp_path / "j.sqlite") as journal:
        engine = _engine(hosts, journal, shutdown_timeout_seconds=shutdown_timeout_seconds)
        web = hosts.add_vm("web")
        _open_windows(engine, [_planned(web, "web")])
        _until(lambda: hosts.volume("host-b", "web") == DATA)

        written: list[int] = []

        def guest(offset: int) -> None:
            # The shutdown's pass reads the last block: the guest writes the first, which that pass read.
            record = journal.get(web)
            if (write_during_the_shutdown_pass and offset == 3 * MIB and not written and record is not None
                    and record.state is MoveState.QUIESCING):  # fmt: skip
                hosts.source.guest_write(POOL, "web.raw", 10, b"written as the guest shut down")
                written.append(offset)

        hosts.source.before_live_read = guest
        final = hosts.volume("host-a", "web")
        assert engine.submit(web)
        assert engine.wait_idle(5)
        assert written or not write_during_the_shutdown_pass
        engine.stop()
        record = journal.get(web)
    assert record is not None and record.state is MoveState.DONE
    return final


def test_a_copy_the_last_pass_left_untouched_is_verified_by_the_digest_taken_meanwhile(
    tmp_path: Path,
) -> None:
    hosts = Hosts()
    final = _moved(tmp_path, hosts, write_during_the_shutdown_pass=False)
    assert hosts.volume("host-b", "web") == final == DATA
    assert _digests_taken(hosts) == 1


def test_a_copy_the_last_pass_patched_is_digested_again_and_ends_exact(tmp_path: Path) -> None:
    hosts = Hosts()
    _moved(tmp_path, hosts, write_during_the_shutdown_pass=True)
    copy = hosts.volume("host-b", "web")
    assert copy is not None and copy[10:40] == b"written as the guest shut down"
    assert copy[MIB:] == DATA[MIB:]
    assert _digests_taken(hosts) == 2, "the digest taken during the last pass was not trusted"


def test_the_destination_digests_its_copy_while_the_guest_shuts_down_not_after(tmp_path: Path) -> None:
    hosts = Hosts()
    power_off = hosts.source.destroy_vm
    digested_before_off: list[bool] = []

    def destroy_vm(uuid: str) -> None:  # the shutdown's deadline: the guest ignored ACPI
        deadline = time.monotonic() + 3
        while _digests_taken(hosts) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        digested_before_off.append(_digests_taken(hosts) == 1)
        power_off(uuid)

    hosts.source.destroy_vm = destroy_vm  # type: ignore[method-assign]
    # The guest ignores ACPI for 10 s of the fake's clock (10,000 looks): the shutdown's pass ends first.
    final = _moved(tmp_path, hosts, write_during_the_shutdown_pass=False, shutdown_timeout_seconds=10)
    assert digested_before_off == [True]
    assert hosts.volume("host-b", "web") == final == DATA
    assert _digests_taken(hosts) == 1  # that digest verified the move: none taken after the guest was off
