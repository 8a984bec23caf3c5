"""The demo's closing table: where each VM runs now, as every host's libvirt says, and whether it came through
whole (one running copy, on another host, the source clean, the disk's checksum equal)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from evacuator.commands.demo_story import MoveFacts, Story
from evacuator.commands.demo_tenant import Told
from evacuator.hypervisor.model import VmState

COLUMNS = ("VM", "runs on", "left on source", "downtime", "disk copy", "checksum equal")


@dataclass(frozen=True, slots=True, kw_only=True)
class Landing:
    """One VM after the evacuation, read from the hosts' libvirt (the demo reads it: the lab is its own)."""

    name: str
    source: str
    where: Mapping[str, VmState]  # every host the VM is defined on, and its state there
    left_on_source: tuple[str, ...]  # "the VM", "its disk"
    checksum_equal: bool  # the disk of its one running copy holds the bytes it had before

    @property
    def whole(self) -> bool:
        running = [host for host, state in self.where.items() if state is VmState.RUNNING]
        moved = len(running) == 1 and running[0] != self.source
        return moved and not self.left_on_source and self.checksum_equal


def _copy(move: MoveFacts | None) -> str:
    if move is None or move.bytes_copied is None:
        return "-"
    how = f"{move.destination}'s daemon" if move.channel_bytes else "libvirt upload"
    return f"{move.bytes_copied / (1 << 20):.1f} MiB via {how}"


def closing_table(story: Story, landings: Mapping[str, Landing], told: Told) -> bool:
    """Draws the table (one row per VM, by uuid) and returns whether the demo did what it shows."""
    moves, rows = story.moves(), []
    for uuid, landing in landings.items():
        move = moves.get(uuid)
        downtime = None if move is None else move.downtime_seconds
        rows.append((
            landing.name,
            ", ".join(f"{host} ({state})" for host, state in landing.where.items()) or "nowhere",
            " and ".join(landing.left_on_source) or "nothing",
            "-" if downtime is None else f"{downtime:.1f} s",
            _copy(move),
            "yes" if landing.checksum_equal else "no",
        ))  # fmt: skip
    source = next(iter(landings.values())).source if landings else "the host"
    story.teller.table(f"After the evacuation of {source}", COLUMNS, rows)
    return told.completed and not told.failed and all(landing.whole for landing in landings.values())
