"""The demo's story: the daemons' log events as one readable line per step, and what each move did."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

MIB = 1 << 20


class Tone(StrEnum):
    PLAIN = "plain"
    STEP = "step"
    GOOD = "good"
    WARN = "warn"
    BAD = "bad"


@dataclass(frozen=True, slots=True, kw_only=True)
class Line:
    at: datetime
    who: str  # a host's daemon, the tenant, or the lab
    text: str
    tone: Tone = Tone.PLAIN


class Teller(Protocol):
    """Where the story goes: a terminal (rich) or a pipe (plain lines), demo_output.py."""

    def say(self, line: Line) -> None: ...
    def note(self, text: str) -> None: ...
    def table(self, title: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None: ...


@dataclass(slots=True)
class MoveFacts:
    """What one VM's move did, as its source's and destination's daemons logged it."""

    name: str
    destination: str | None = None
    steps: dict[str, tuple[datetime, float]] = field(default_factory=dict)  # step: (finished at, seconds)
    # By volume, each one's last copy written by the destination's daemon (its data channel), not a libvirt
    # upload: a copy during the window may come before the move starts, and a retry sends it again.
    channel: dict[str, int] = field(default_factory=dict)
    patched_bytes: int | None = None  # pre-copied during the shutdown: what changed after it, written after
    peer_digest: bool = False  # the destination's daemon read the copy back and sent its digest
    seconds: float | None = None
    bytes_copied: int | None = None

    @property
    def channel_bytes(self) -> int:
        return sum(self.channel.values())

    @property
    def downtime_seconds(self) -> float | None:
        """Guest off (quiesce finished) to running on the destination (start finished), as `history`
        counts it."""
        if "quiesce" not in self.steps or "start" not in self.steps:
            return None
        return (self.steps["start"][0] - self.steps["quiesce"][0]).total_seconds()


def _size(size_bytes: int) -> str:
    return f"{size_bytes / MIB:.1f} MiB"


def _clock(value: str) -> str:
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%H:%M:%S")


_SAID_BY_THE_LINE = frozenset({"event", "level", "timestamp", "process"})
# Events that mean a copy or a digest went the slow way around the destination's daemon (libvirt):
# production has a daemon on every host, so the demo should never show them.
FALLBACK_EVENTS = frozenset({"data_channel_unavailable", "peer_digest_unavailable"})


class Story:
    """Turns each event of a daemon's log into at most one line for `teller`; thread-safe (each daemon's
    log is read on a thread of its own, the tenant speaks from the demo's main thread)."""

    def __init__(self, teller: Teller) -> None:
        self.teller = teller
        self._names: dict[str, str] = {}  # vm_uuid: name
        self._lock = threading.Lock()
        self._ready: set[str] = set()  # VMs whose tenant said ready: their window closed early
        self._forced: set[str] = set()
        self._claims: set[str] = set()
        self._verdicts: dict[str, str] = {}  # a daemon's first verdict, told with its being ready
        self._moves: dict[str, MoveFacts] = {}
        # The events that are steps of the story; the others go to the JSON log only (warnings and errors
        # are told too, see _unexpected). The tenant tells each notice as it gets it (demo_tenant.py).
        self._handlers: dict[str, Callable[[str, Mapping[str, Any]], tuple[str, Tone] | None]] = {
            "host_verdict_changed": self._verdict,
            "daemon_ready": self._daemon_ready,
            "evacuation_planned": self._planned,
            "evacuation_window_opened": self._window_opened,
            "tenant_ready": self._tenant_ready,
            "evacuation_window_closed": self._window_closed,
            "claim_granted": self._claim,
            "move_started": self._move_started,
            "vm_forced_off": self._forced_off,
            "data_channel_sent": self._channel_sent,
            "precopy_finished": self._precopy,
            "volume_received": self._received,
            "peer_digest_received": self._digest,
            "move_step_finished": self._step,
            "move_finished": self._move_finished,
        }

    def name_vms(self, names: Mapping[str, str]) -> None:
        """The VMs' names by uuid (most events name a VM by its uuid only)."""
        with self._lock:
            self._names.update(names)

    def say(self, who: str, text: str, tone: Tone = Tone.PLAIN) -> None:
        """A line of the demo's own (the lab, the tenant), at this moment."""
        with self._lock:
            self.teller.say(Line(at=datetime.now(UTC), who=who, text=text, tone=tone))

    def event(self, who: str, event: Mapping[str, Any]) -> None:
        """One event of `who`'s daemon log: a line if it is a step of the story, or a warning or error."""
        name = str(event.get("event"))
        with self._lock:
            handler = self._handlers.get(name)
            said = handler(who, event) if handler is not None else self._unexpected(event)
            if said is not None:
                at = datetime.fromisoformat(event["timestamp"]) if "timestamp" in event else datetime.now(UTC)
                self.teller.say(Line(at=at, who=who, text=said[0], tone=said[1]))

    def moves(self) -> dict[str, MoveFacts]:
        with self._lock:
            return dict(self._moves)

    def _vm(self, event: Mapping[str, Any]) -> str:
        uuid = str(event.get("vm_uuid"))
        return self._names.get(uuid, uuid)

    def _move(self, event: Mapping[str, Any]) -> MoveFacts:
        uuid = str(event.get("vm_uuid"))
        return self._moves.setdefault(uuid, MoveFacts(name=self._vm(event)))

    def _move_of_volume(self, event: Mapping[str, Any]) -> MoveFacts | None:
        # The lab's volumes are `<vm name>.raw` (evacuator/lab/vms.py).
        name = str(event.get("volume", "")).removesuffix(".raw")
        uuid = next((uuid for uuid, known in self._names.items() if known == name), None)
        return None if uuid is None else self._moves.setdefault(uuid, MoveFacts(name=name))

    def _verdict(self, who: str, event: Mapping[str, Any]) -> tuple[str, Tone] | None:
        severity = str(event.get("severity"))
        if event.get("previous") is None:
            self._verdicts[who] = severity
            return None
        reasons = event.get("reasons") or []
        why = f": {reasons[0]}" if reasons else ""
        return f"verdict {severity}{why}", Tone.GOOD if severity == "healthy" else Tone.BAD

    def _daemon_ready(self, who: str, _event: Mapping[str, Any]) -> tuple[str, Tone]:
        verdict = self._verdicts.get(who, "unknown")
        return f"daemon ready: sensors, libvirt and broker up; verdict {verdict}", Tone.PLAIN

    def _planned(self, _who: str, event: Mapping[str, Any]) -> tuple[str, Tone]:
        return f"evacuation planned: {event.get('vm_count')} VMs to move", Tone.WARN

    def _window_opened(self, _who: str, event: Mapping[str, Any]) -> tuple[str, Tone]:
        until = _clock(str(event["deadline"])) if event.get("deadline") else "?"
        seconds = event.get("window_seconds")
        return f"{self._vm(event)}: window of {seconds} s opened, until {until}", Tone.PLAIN

    def _tenant_ready(self, _who: str, event: Mapping[str, Any]) -> None:
        self._ready.add(str(event.get("vm_uuid")))  # told with the window it closes

    def _window_closed(self, _who: str, event: Mapping[str, Any]) -> tuple[str, Tone]:
        why = "its tenant is ready" if event.get("vm_uuid") in self._ready else "its time ran out"
        return f"{self._vm(event)}: window over, {why}", Tone.WARN

    def _claim(self, _who: str, event: Mapping[str, Any]) -> tuple[str, Tone] | None:
        claim_id = str(event.get("claim_id"))
        if claim_id in self._claims:
            return None  # the mover claims again (its window's copy done, a retry): the same room
        self._claims.add(claim_id)
        vms = ", ".join(self._names.get(str(u), str(u)) for u in event.get("vm_uuids") or ())
        memory = int(event.get("memory_bytes") or 0)
        return (
            f"grants {event.get('requester')} room for {vms or 'a VM'} ({_size(memory)} memory)",
            Tone.PLAIN,
        )

    def _move_started(self, _who: str, event: Mapping[str, Any]) -> tuple[str, Tone]:
        self._names.setdefault(str(event.get("vm_uuid")), str(event.get("vm_name")))
        self._move(event).destination = str(event.get("destination"))
        return f"{self._vm(event)}: move to {event.get('destination')} started", Tone.STEP

    def _forced_off(self, _who: str, event: Mapping[str, Any]) -> None:
        self._forced.add(str(event.get("vm_uuid")))  # told with the quiesce step it ends

    def _channel_sent(self, _who: str, event: Mapping[str, Any]) -> None:
        move = self._move_of_volume(event)
        if move is not None:
            move.channel[str(event.get("volume"))] = int(event.get("bytes_written") or 0)

    def _precopy(self, _who: str, event: Mapping[str, Any]) -> None:
        move = self._move_of_volume(event)
        if move is not None:
            move.patched_bytes = int(event.get("patched_bytes") or 0)

    def _received(self, _who: str, event: Mapping[str, Any]) -> tuple[str, Tone]:
        written = int(event.get("bytes_written") or 0)
        move = self._move_of_volume(event)
        # Before its move started: copied during the VM's window while it still runs (moves/window_copies.py).
        ahead = ", ahead of its move" if move is not None and move.destination is None else ""
        return (
            f"{event.get('volume')} received over its data channel: {_size(written)} written{ahead}",
            Tone.PLAIN,
        )

    def _digest(self, _who: str, event: Mapping[str, Any]) -> None:
        move = self._move_of_volume(event)
        if move is not None:
            move.peer_digest = True

    def _step(self, _who: str, event: Mapping[str, Any]) -> tuple[str, Tone]:
        move, step = self._move(event), str(event.get("step"))
        seconds = float(event.get("seconds") or 0.0)
        move.steps[step] = (datetime.fromisoformat(event["timestamp"]), seconds)
        detail = {
            "quiesce": " (no OS answers ACPI: forced off at the timeout)"
            if event.get("vm_uuid") in self._forced
            else " (shut down)",
            "copy_disks": self._copy_detail(move),
            "verify_disks": f" (digest from {move.destination}'s daemon equal)" if move.peer_digest else "",
        }.get(step, "")
        if event.get("error"):
            return f"{move.name}: {step} FAILED after {seconds:.2f} s: {event['error']}", Tone.BAD
        return f"{move.name}:   {step:<12} {seconds:6.2f} s{detail}", Tone.STEP

    def _copy_detail(self, move: MoveFacts) -> str:
        how = f"{move.destination}'s data channel" if move.channel_bytes else "libvirt"
        sent = f"{_size(move.channel_bytes)} " if move.channel_bytes else ""
        if move.patched_bytes is None:
            return f" ({sent}through {how})"
        # Pre-copied while the guest still ran (its window, its shutdown): this step only wrote the blocks
        # that changed since.
        changed = (
            f"{_size(move.patched_bytes)} changed since" if move.patched_bytes else "nothing changed since"
        )
        return f" ({sent}through {how} before the guest was off; {changed})"

    def _move_finished(self, _who: str, event: Mapping[str, Any]) -> tuple[str, Tone]:
        move = self._move(event)
        move.seconds = float(event.get("seconds") or 0.0)
        move.bytes_copied = int(event.get("bytes_copied") or 0)
        downtime = move.downtime_seconds
        off = f", down {downtime:.1f} s" if downtime is not None else ""
        return f"{move.name}: on {move.destination} after {move.seconds:.1f} s{off}", Tone.GOOD

    def _unexpected(self, event: Mapping[str, Any]) -> tuple[str, Tone] | None:
        level = str(event.get("level", "info"))
        if level not in ("warning", "error", "critical") and event.get("event") not in FALLBACK_EVENTS:
            return None
        context = " ".join(f"{k}={v}" for k, v in event.items() if k not in _SAID_BY_THE_LINE)
        return f"{level}: {event.get('event')} {context}".rstrip(), Tone.BAD if level != "info" else Tone.WARN
