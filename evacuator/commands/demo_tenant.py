"""The demo's tenant: what a tenant's platform does with the notices, over the tenant's own broker user."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from evacuator.commands.demo_story import Story, Tone
from notifiers.messages import (
    EvacuationCompleted,
    EvacuationFailed,
    EvacuationScheduled,
    EvacuationStarted,
    EvacuationUpdated,
    Notice,
    VmEvacuated,
)
from notifiers.tenant import TenantClient

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Told:
    """What the tenant heard: where each VM went (by uuid), whether the evacuation ended, and how."""

    moved: dict[str, str] = field(default_factory=dict)  # vm_uuid: the host it runs on now
    completed: bool = False
    failed: list[str] = field(default_factory=list)  # VM names the evacuation gave up on


def play_tenant(client: TenantClient, story: Story, *, host: str, ready_for: str, vm_count: int,
                timeout_seconds: float) -> Told:  # fmt: skip
    """Reads notices until the evacuation completed (or `timeout_seconds`), telling each: drains
    `ready_for` and answers ready for it at once; lets the other VMs' windows run out."""
    told = Told()
    deadline = time.monotonic() + timeout_seconds
    while not told.completed and time.monotonic() < deadline:
        notice = client.next_notice(1.0)
        if notice is None:
            continue
        text, tone = _heard(notice, told)
        story.say("tenant", f"notice: {text}", tone)
        log.info("demo_tenant_notice", notice_type=notice.type, event_id=notice.event_id)
        if isinstance(notice, EvacuationScheduled):
            for vm in notice.vms:
                if vm.vm_name == ready_for:
                    client.send_ready(host, vm.vm_uuid, notice.event_id)
                    story.say("tenant", f"{vm.vm_name} drained: answers ready", Tone.GOOD)
                    log.info("demo_tenant_ready", vm_name=vm.vm_name)
    if not told.completed:
        story.say("tenant", f"no 'evacuation completed' within {timeout_seconds:.0f} s "
                  f"({len(told.moved)} of {vm_count} VMs moved)", Tone.BAD)  # fmt: skip
        log.error("demo_timed_out", moved=len(told.moved), expected=vm_count, timeout_seconds=timeout_seconds)
    return told


_CAUSES = {
    "expedited": "ready accepted, moving now",
    "postponed": "postponed",
    "held_back": "window over, held back by the cloud's guard rails",
}


def _heard(notice: Notice, told: Told) -> tuple[str, Tone]:
    """What the tenant makes of one notice (and notes in `told`), in a few words."""
    if isinstance(notice, EvacuationScheduled):
        why = f" ({notice.reasons[0].message})" if notice.reasons else ""
        by = ", ".join(f"{vm.vm_name} by {vm.deadline:%H:%M:%S}" for vm in notice.vms)
        return f"{notice.host} is {notice.severity}{why}; leaving: {by}", Tone.WARN
    if isinstance(notice, EvacuationUpdated):
        names = ", ".join(vm.vm_name for vm in notice.vms)
        hold = f" ({notice.hold})" if notice.hold else ""
        return f"{names}: {_CAUSES.get(notice.cause, notice.cause)}{hold}", Tone.PLAIN
    if isinstance(notice, EvacuationStarted):
        return f"{notice.vm_name} is moving now (shut down first)", Tone.PLAIN
    if isinstance(notice, VmEvacuated):
        told.moved[notice.vm_uuid] = notice.to_host
        return f"{notice.vm_name} evacuated, runs on {notice.to_host}", Tone.GOOD
    if isinstance(notice, EvacuationFailed):
        told.failed.append(notice.vm_name)
        return f"{notice.vm_name} could not be moved: {notice.reason}", Tone.BAD
    if isinstance(notice, EvacuationCompleted):
        told.completed = True
        return "evacuation completed", Tone.GOOD
    return notice.type.replace("_", " "), Tone.WARN
