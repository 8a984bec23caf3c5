"""Wire models of the tenant contract (schema 1): notices the service sends, replies tenants send back."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.config import JsonDict

from notifiers.errors import MalformedNotice, MalformedReply, UnknownNoticeType
from notifiers.wire import (
    MAX_BODY_BYTES,
    SCHEMA_VERSION,
    EventId,
    Incarnation,
    Name,
    ReplyType,
    Seconds,
    UtcDatetime,
    UuidText,
    WireModel,
    WireRejectCode,
    WireSeverity,
    new_event_id,
)

# re-exported: older imports name them here
__all__ = ["MAX_BODY_BYTES", "SCHEMA_VERSION", "WireRejectCode", "new_event_id"]


class _Sent(WireModel):
    # What the service sends is described as it is written (serialization mode): every field is always
    # there, null included, so every field is required in the published schema. A tolerant reader: a field
    # this version does not know is ignored, not refused, and the published schemas allow it, so a newer
    # service may add optional fields to schema 1 (as vm_evacuated's downtime_seconds) without breaking a
    # tenant. Replies, which the service reads from tenants, stay strict (WireModel).
    model_config = ConfigDict(json_schema_mode_override="serialization", extra="ignore")


class Reason(_Sent):
    """One sensor finding behind the verdict, in the sensor's own unit; value None means no data (stale)."""

    source: Name | None = None
    sensor: Name
    value: float | None
    threshold: float | None
    unit: str = Field(max_length=32)
    message: str = Field(max_length=1024)


class ScheduledVm(_Sent):
    """A VM of the tenant on the sick host, and when its cold migration starts.

    In `evacuation_updated` the same VM with its new `deadline`; `latest_deadline` is repeated unchanged.
    """

    vm_uuid: UuidText
    vm_name: Name
    deadline: UtcDatetime = Field(
        description="When the move starts unless the tenant answers ready first (then at once): the VM's "
        "current deadline. A postpone adds to it; every change comes in an evacuation_updated."
    )
    not_before: UtcDatetime | None = Field(
        default=None,
        description="When set, the move does not start before this time unless the tenant answers ready. "
        "null: the service gives no such time.",
    )
    latest_deadline: UtcDatetime | None = Field(
        default=None,
        description="The latest a postpone can push `deadline` to; postpones are capped at it. Fixed when "
        "the VM is scheduled and never moves: evacuation_updated repeats the scheduled notice's value. null: "
        "this VM's move cannot be postponed at all (a failed host, or a service that takes no postpone: "
        "`postpone` is then missing from allowed_replies), and a postpone is refused.",
    )


class _Notice(_Sent):
    schema_version: Literal[1] = 1
    event_id: EventId = Field(
        default_factory=new_event_id,
        description="This notice's own id (a random UUID): a notice may arrive twice, drop one whose "
        "event_id you have handled. Replies name the evacuation_scheduled notice's event_id.",
    )
    incarnation: Incarnation = 1


class EvacuationScheduled(_Notice):
    """Notice: the tenant's VMs on `host` move at their deadlines, or sooner once the tenant answers ready."""

    type: Literal["evacuation_scheduled"] = "evacuation_scheduled"
    host: Name
    tenant: Name
    severity: WireSeverity = Field(
        description="How sick the host is (moderate, severe, failed: as its policy for each says), or "
        "maintenance: an admin drains a healthy host (evacuator drain), and the one reason, with source "
        "maintenance, says why in its message; or the VMs go back to the host they were evacuated from, now "
        "in service again (the one reason has source maintenance and sensor move_back)."
    )
    reasons: tuple[Reason, ...]
    vms: tuple[ScheduledVm, ...] = Field(min_length=1)
    allowed_replies: tuple[ReplyType, ...] = ("ready",)
    reply_exchange: Name
    reply_routing_key: Name


class EvacuationUpdated(_Notice):
    """Notice: deadlines of some VMs of the scheduled event changed (a postpone, a ready, a new reading)."""

    type: Literal["evacuation_updated"] = "evacuation_updated"
    host: Name
    tenant: Name
    cause: Literal["postponed", "expedited", "severity_changed", "held_back"] = Field(
        description="postponed: a postpone was granted (the new deadline may be less than asked, capped at "
        "latest_deadline). expedited: a ready was accepted, the move starts now. severity_changed: reserved "
        "for deadlines changed by a new reading (not sent by this version). held_back: the windows are over "
        "but a cloud-wide guard holds the moves back (`hold` says which); they start as soon as it allows, "
        "each announced by evacuation_started."
    )
    hold: Literal["paused", "too_many_evacuating", "too_little_room", "too_soon"] | None = Field(
        default=None,
        description="With cause held_back: paused (an admin paused evacuations cloud-wide), "
        "too_many_evacuating (the share of hosts that may evacuate at once is reached), too_little_room (the "
        "cloud would be left with too little free room), too_soon (another host began moments ago).",
    )
    vms: tuple[ScheduledVm, ...] = Field(min_length=1)
    at: UtcDatetime
    scheduled_event_id: EventId | None = None


class AtRiskVm(_Sent):
    """A VM of the tenant on a host at risk."""

    vm_uuid: UuidText
    vm_name: Name


class HostAtRisk(_Notice):
    """Notice: `host` is sick and its policy for this severity is `notify`: nothing is moved (yet); the tenant
    may act on its own (fail over, drain a replica, take a backup). Sent once per sick spell, and again when
    the severity gets worse; no reply is expected. If the host later evacuates after all (a worse severity
    whose policy is evacuate), evacuation_scheduled follows as usual."""

    type: Literal["host_at_risk"] = "host_at_risk"
    tenant: Name
    host: Name
    severity: Literal["moderate", "severe", "failed"]
    reasons: tuple[Reason, ...]
    vms: tuple[AtRiskVm, ...] = Field(min_length=1)
    at: UtcDatetime


class EvacuationStarted(_Notice):
    """Notice: the cold migration of one VM has begun (it is being shut down now)."""

    type: Literal["evacuation_started"] = "evacuation_started"
    tenant: Name
    host: Name
    vm_uuid: UuidText
    vm_name: Name
    at: UtcDatetime
    scheduled_event_id: EventId | None = None


class VmEvacuated(_Notice):
    """Notice ("vm moved"): one VM now runs (or is defined, if it was off) on `to_host`."""

    type: Literal["vm_evacuated"] = "vm_evacuated"
    tenant: Name
    host: Name = Field(description="The host the VM left, whose service sends this notice (as every notice).")
    vm_uuid: UuidText
    vm_name: Name
    from_host: Name = Field(description="The same value as `host`, kept for clients written before `host`.")
    to_host: Name
    at: UtcDatetime
    scheduled_event_id: EventId | None = None
    # What the move cost, for the tenant's own service level. Defaults: a service older than these fields
    # leaves them out, and a parser of this version still reads its notices.
    downtime_seconds: float | None = Field(
        default=None, strict=True, ge=0,
        description="How long the VM was down for this move, in seconds: from the guest off on `host` (its "
        "shutdown finished) to it running on `to_host` (its start there finished), as the move's journal "
        "recorded them. null: not measured: the VM was off before the move (it is defined on `to_host` and "
        "stays off: nothing was interrupted), or it moved live (its pause in libvirt's switch-over is not "
        "measured); absent from a service older than this field.",
    )  # fmt: skip
    bytes_moved: int | None = Field(
        default=None, strict=True, ge=0,
        description="Disk bytes the move wrote to `to_host` (sparse disks send only their allocated "
        "extents), counted by the move's last attempt. null: a live move (libvirt copies its disks "
        "uncounted); absent from a service older than this field.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _host_is_from_host(self) -> VmEvacuated:
        if self.host != self.from_host:
            raise ValueError(f"host {self.host!r} and from_host {self.from_host!r} must be the same host")
        return self


class EvacuationCompleted(_Notice):
    """Notice: every VM of the tenant named in the scheduled event has been handled."""

    type: Literal["evacuation_completed"] = "evacuation_completed"
    tenant: Name
    host: Name
    moved_vm_uuids: tuple[UuidText, ...]
    failed_vm_uuids: tuple[UuidText, ...] = ()
    at: UtcDatetime
    scheduled_event_id: EventId | None = None


class EvacuationCancelled(_Notice):
    """Notice: the host recovered (or an operator cancelled) before these VMs moved; they stay."""

    type: Literal["evacuation_cancelled"] = "evacuation_cancelled"
    tenant: Name
    host: Name
    vm_uuids: tuple[UuidText, ...] = Field(min_length=1)
    reason: str = Field(min_length=1, max_length=4096)
    at: UtcDatetime
    scheduled_event_id: EventId | None = None


class EvacuationFailed(_Notice):
    """Notice: moving one VM failed; `reason` is for humans, the VM's state is as the service last saw it."""

    type: Literal["evacuation_failed"] = "evacuation_failed"
    tenant: Name
    host: Name
    vm_uuid: UuidText
    vm_name: Name
    reason: str = Field(min_length=1, max_length=4096)
    at: UtcDatetime
    scheduled_event_id: EventId | None = None


class ReplyRejected(_Notice):
    """Notice: the service refused one of the tenant's replies; `code` is stable, `reason` for humans."""

    type: Literal["reply_rejected"] = "reply_rejected"
    tenant: Name
    host: Name
    code: WireRejectCode
    reason: str = Field(min_length=1, max_length=4096)
    in_reply_to: str | None = Field(
        default=None,
        max_length=255,
        description="The AMQP message_id property of the refused reply (null if it had none): give every "
        "reply a fresh message_id to know which one this is.",
    )
    vm_uuid: UuidText | None = None
    at: UtcDatetime


_ENVELOPE = ("schema_version", "type")
_REPLY_EVENT_ID = (
    "The event_id of the VM's evacuation_scheduled notice (not an update's): refused as stale_event if it "
    "names another evacuation. null or absent: not checked."
)


def _envelope_required(schema: JsonDict) -> None:
    """parse_reply refuses a reply without `schema_version` or `type`, so its schema requires them too, though
    the models fill both in for code that builds replies."""
    required = schema.get("required", [])
    assert isinstance(required, list)
    schema["required"] = [*_ENVELOPE, *(name for name in required if name not in _ENVELOPE)]


class _Reply(WireModel):
    model_config = ConfigDict(json_schema_extra=_envelope_required)


class ReadyReply(_Reply):
    """Reply: the tenant has finished preprocessing `vm_uuid`; the service may move it now."""

    schema_version: Literal[1] = 1
    type: Literal["ready"] = "ready"
    vm_uuid: UuidText
    event_id: EventId | None = Field(default=None, description=_REPLY_EVENT_ID)


class PostponeReply(_Reply):
    """Reply: move `vm_uuid` later by `postpone_seconds`, granted up to the policy caps (none if failed)."""

    schema_version: Literal[1] = 1
    type: Literal["postpone"] = "postpone"
    vm_uuid: UuidText
    postpone_seconds: Annotated[Seconds, Field(ge=1)] = Field(
        description="Added to the VM's current deadline (the last one notified), capped at its "
        "latest_deadline; the deadline granted comes back in evacuation_updated (cause postponed)."
    )
    event_id: EventId | None = Field(default=None, description=_REPLY_EVENT_ID)


class RegisterReply(_Reply):
    """Reply: set the VM's preprocessing window for future evacuations (capped by the admin's maximum).

    May be sent before any notice, to `<tenant>.all`: only the host holding the VM stores it.
    """

    schema_version: Literal[1] = 1
    type: Literal["register"] = "register"
    vm_uuid: UuidText
    window_seconds: Seconds


Notice: TypeAlias = Annotated[
    HostAtRisk
    | EvacuationScheduled
    | EvacuationUpdated
    | EvacuationStarted
    | VmEvacuated
    | EvacuationCompleted
    | EvacuationCancelled
    | EvacuationFailed
    | ReplyRejected,
    Field(discriminator="type"),
]
Reply: TypeAlias = Annotated[ReadyReply | PostponeReply | RegisterReply, Field(discriminator="type")]
NOTICE_MODELS: tuple[type[WireModel], ...] = (
    HostAtRisk, EvacuationScheduled, EvacuationUpdated, EvacuationStarted, VmEvacuated,
    EvacuationCompleted, EvacuationCancelled, EvacuationFailed, ReplyRejected,
)  # fmt: skip
REPLY_MODELS: tuple[type[WireModel], ...] = (ReadyReply, PostponeReply, RegisterReply)
NOTICE_TYPES = tuple(str(m.model_fields["type"].default) for m in NOTICE_MODELS)
REPLY_TYPES = tuple(str(m.model_fields["type"].default) for m in REPLY_MODELS)
_NOTICE_ADAPTER: TypeAdapter[Notice] = TypeAdapter(Notice)
_REPLY_ADAPTER: TypeAdapter[Reply] = TypeAdapter(Reply)


def notice_route(notice: Notice) -> tuple[str, str]:
    """The (tenant, host) a notice is about: the first two words of its routing key."""
    return notice.tenant, notice.host


def encode(message: Notice | Reply) -> bytes:
    """The message as compact UTF-8 JSON, the only body format on the wire."""
    return message.model_dump_json().encode()


def parse_notice(body: bytes) -> Notice:
    """Decode a notice body, or raise MalformedNotice saying what was wrong: UnknownNoticeType for a
    well-formed schema 1 notice of a type a newer service added, which a client ignores."""
    try:
        _precheck(body, NOTICE_TYPES)
        return _NOTICE_ADAPTER.validate_json(body)
    except _UnknownType as exc:
        raise UnknownNoticeType(str(exc)) from exc
    except ValueError as exc:
        raise MalformedNotice(_describe(exc)) from exc


def parse_reply(body: bytes) -> Reply:
    """Decode a reply body, or raise MalformedReply saying what was wrong."""
    try:
        _precheck(body, REPLY_TYPES)
        return _REPLY_ADAPTER.validate_json(body)
    except ValueError as exc:
        raise MalformedReply(_describe(exc)) from exc


def _precheck(body: bytes, known_types: tuple[str, ...]) -> None:
    """Reject what the models would report obscurely: size, non-JSON, other schema versions, unknown types."""
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"body is {len(body)} bytes, more than the {MAX_BODY_BYTES} allowed")
    try:
        document: Any = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not UTF-8 JSON ({exc})") from exc
    except RecursionError as exc:  # deeply nested arrays: json gives up before we would
        raise ValueError("body is not UTF-8 JSON (nested too deeply)") from exc
    if not isinstance(document, dict):
        raise ValueError(f"body is a JSON {type(document).__name__}, expected an object")
    version = document.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        shown = "missing" if version is None else repr(version)
        raise ValueError(f"schema_version is {shown}, expected {SCHEMA_VERSION}")
    kind = document.get("type")
    if not isinstance(kind, str) or kind not in known_types:
        known = isinstance(kind, str) and _TYPE_NAME.fullmatch(kind) is not None
        raise (_UnknownType if known else ValueError)(
            f"type is {_short(kind)}, expected one of {', '.join(known_types)}")


class _UnknownType(ValueError):
    """A type word this version does not know (a newer one's), as opposed to garbage."""


_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _short(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _describe(exc: ValueError) -> str:
    if not isinstance(exc, ValidationError):
        return str(exc)
    problems = (
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}" for error in exc.errors()
    )
    return "; ".join(problems)[:1024]
