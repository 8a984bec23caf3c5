"""The values of a move: its steps and their working state, the events the journal records, the report."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from evacuator.hypervisor.model import VolumeRef


class MoveStep(StrEnum):
    """The steps of a cold move, in order."""

    QUIESCE = "quiesce"
    COPY_DISKS = "copy_disks"
    VERIFY_DISKS = "verify_disks"
    DEFINE = "define"
    START = "start"
    VERIFY = "verify"
    CLEAN_UP = "clean_up"


# The steps that move disk bytes: they run under a transfer slot (evacuator/moves/transfer_slots.py).
TRANSFER_STEPS = frozenset({MoveStep.COPY_DISKS, MoveStep.VERIFY_DISKS})

# Holds a transfer slot for one VM's disks while the block runs (the migrator is told how, by the engine).
TransferSlot = Callable[[str], AbstractContextManager[None]]


# As TransferSlot, but never waits: the block holds a slot (True) only if one was free at once (a pre-copy).
TryTransferSlot = Callable[[str], AbstractContextManager[bool]]


def no_slot(vm_uuid: str) -> AbstractContextManager[None]:
    """Without an engine (the `move` command, tests): no cap to wait for."""
    return nullcontext()


class StepPhase(StrEnum):
    """A step starts, reads where the VM is, then finishes, fails, or is skipped having nothing to do."""

    STARTED = "started"
    FINISHED = "finished"
    SKIPPED = "skipped"
    FAILED = "failed"


EVENT_NAMES = {
    StepPhase.STARTED: "move_step_started",
    StepPhase.FINISHED: "move_step_finished",
    StepPhase.SKIPPED: "move_step_skipped",
    StepPhase.FAILED: "move_step_failed",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StepEvent:
    """What the journal records; `seconds` is set once the step has finished or failed, `error` if failed."""

    vm_uuid: str
    step: MoveStep
    phase: StepPhase
    at: datetime
    seconds: float | None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepTiming:
    """How long one step took in one move attempt, and whether it found nothing to do."""

    step: MoveStep
    skipped: bool
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MoveReport:
    """How a completed move went."""

    vm_uuid: str
    vm_name: str
    source: str
    destination: str
    steps: tuple[StepTiming, ...]
    bytes_copied: int
    forced_off: bool
    running_on_destination: bool
    seconds: float


def copy_timeout_seconds(data_bytes: int, base_seconds: float, min_bytes_per_second: float) -> float:
    """How long copying a volume may take: a fixed allowance plus its allocated bytes at the slowest
    acceptable rate, so a big disk is not cut short and a small one does not wait minutes on a dead peer."""
    return base_seconds + data_bytes / min_bytes_per_second


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecopiedVolume:
    """What a pre-copy sent: from which file, how much, the digest of each block, and from which byte on
    every read began after the VM was off (`settled_bytes`; the whole length when none did)."""

    identity: str
    length_bytes: int
    settled_bytes: int
    block_digests: tuple[bytes, ...]
    bytes_written: int


class StepRefused(Exception):
    """Raised inside a step when reality forbids going on; the Stepper turns it into a MigrationError."""


class PendingDigests(Protocol):
    """Digests a destination is taking of its copies (converge.StoredDigests)."""

    def results(self, refs: Iterable[VolumeRef]) -> dict[VolumeRef, str]:
        """Once taken: the digests of `refs` that could be taken."""
        ...


@dataclass(slots=True, kw_only=True)
class MoveAttempt:
    """Working state of one move attempt, shared by its steps (mutable by design)."""

    uuid: str
    name: str
    run_after: bool
    bytes_copied: int = 0
    forced_off: bool = False
    sent_sha256: dict[VolumeRef, str] = field(default_factory=dict)
    # The destination's digests of copies nothing wrote to since they were taken (cold.py, a pre-copied move).
    stored_sha256: dict[VolumeRef, str] = field(default_factory=dict)
    precopied: dict[VolumeRef, PrecopiedVolume] = field(default_factory=dict)
    # The destination digesting its pre-copies, begun once the shutdown's pass wrote its last block.
    digests_ahead: PendingDigests | None = None
    # The transfer slot the steps hold: taken for the disks' steps, or kept from a pre-copy that ended
    # with the VM off, so its last blocks follow at once.
    slot: ExitStack = field(default_factory=ExitStack)
    holding: bool = False


Action = Callable[[MoveAttempt], bool]
"""One step's work; False when reality shows there is nothing left to do (the step is then skipped)."""
