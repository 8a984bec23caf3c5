"""Wire models of the tenant contract (schema 1): notices the service sends, replies tenants send back."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from notifiers.errors import MalformedNotice, MalformedReply

SCHEMA_VERSION = 1
MAX_BODY_BYTES = 64 * 1024


def new_event_id() -> str:
    """A fresh event id: a random (version 4) UUID in canonical text form."""
    return str(uuid.uuid4())


def _canonical_uuid(value: str) -> str:
    return str(uuid.UUID(value))


def _canonical_uuid4(value: str) -> str:
    parsed = uuid.UUID(value)
    if parsed.version != 4:
        raise ValueError("expected a version 4 UUID")
    return str(parsed)


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UuidText = Annotated[str, AfterValidator(_canonical_uuid)]
EventId = Annotated[str, AfterValidator(_canonical_uuid4)]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc)]
Name = Annotated[str, Field(min_length=1, max_length=255)]
WireSeverity: TypeAlias = Literal["moderate", "severe", "failed"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reason(_Wire):
    """One sensor finding behind the verdict, in the sensor's own unit; value None means no data (stale)."""

    source: Name | None = None
    sensor: Name
    value: float | None
    threshold: float | None
    unit: str = Field(max_length=32)
    message: str = Field(max_length=1024)


class ScheduledVm(_Wire):
    """A VM of the tenant on the failing host, and when its cold migration will start at the latest."""

    vm_uuid: UuidText
    vm_name: Name
    deadline: UtcDatetime


class EvacuationScheduled(_Wire):
    """Notice: the tenant's VMs on `host` move at their deadlines, or sooner once the tenant answers ready."""

    schema_version: Literal[1] = 1
    type: Literal["evacuation_scheduled"] = "evacuation_scheduled"
    event_id: EventId = Field(default_factory=new_event_id)
    host: Name
    tenant: Name
    severity: WireSeverity
    reasons: tuple[Reason, ...]
    vms: tuple[ScheduledVm, ...] = Field(min_length=1)
    allowed_replies: tuple[Literal["ready"], ...] = ("ready",)
    reply_exchange: Name
    reply_routing_key: Name


class VmEvacuated(_Wire):
    """Notice: one VM now runs (or is defined, if it was off) on `to_host`."""

    schema_version: Literal[1] = 1
    type: Literal["vm_evacuated"] = "vm_evacuated"
    event_id: EventId = Field(default_factory=new_event_id)
    tenant: Name
    vm_uuid: UuidText
    vm_name: Name
    from_host: Name
    to_host: Name
    at: UtcDatetime
    scheduled_event_id: EventId | None = None


class EvacuationFailed(_Wire):
    """Notice: moving one VM failed; `reason` is for humans, the VM's state is as the service last saw it."""

    schema_version: Literal[1] = 1
    type: Literal["evacuation_failed"] = "evacuation_failed"
    event_id: EventId = Field(default_factory=new_event_id)
    tenant: Name
    host: Name
    vm_uuid: UuidText
    vm_name: Name
    reason: str = Field(min_length=1, max_length=4096)
    at: UtcDatetime
    scheduled_event_id: EventId | None = None


class ReadyReply(_Wire):
    """Reply: the tenant has finished preprocessing `vm_uuid`; the service may move it now."""

    schema_version: Literal[1] = 1
    type: Literal["ready"] = "ready"
    vm_uuid: UuidText
    event_id: EventId | None = None


Notice: TypeAlias = Annotated[
    EvacuationScheduled | VmEvacuated | EvacuationFailed, Field(discriminator="type")
]
Reply: TypeAlias = ReadyReply
NOTICE_TYPES = ("evacuation_scheduled", "vm_evacuated", "evacuation_failed")
REPLY_TYPES = ("ready",)
_NOTICE_ADAPTER: TypeAdapter[Notice] = TypeAdapter(Notice)
_REPLY_ADAPTER: TypeAdapter[Reply] = TypeAdapter(Reply)


def notice_route(notice: Notice) -> tuple[str, str]:
    """The (tenant, host) a notice is about: the first two words of its routing key."""
    if isinstance(notice, VmEvacuated):
        return notice.tenant, notice.from_host
    return notice.tenant, notice.host


def encode(message: Notice | Reply) -> bytes:
    """The message as compact UTF-8 JSON, the only body format on the wire."""
    return message.model_dump_json().encode()


def parse_notice(body: bytes) -> Notice:
    """Decode a notice body, or raise MalformedNotice saying what was wrong."""
    try:
        _precheck(body, NOTICE_TYPES)
        return _NOTICE_ADAPTER.validate_json(body)
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
    if not isinstance(document, dict):
        raise ValueError(f"body is a JSON {type(document).__name__}, expected an object")
    version = document.get("schema_version")
    if version != SCHEMA_VERSION:
        shown = "missing" if version is None else repr(version)
        raise ValueError(f"schema_version is {shown}, expected {SCHEMA_VERSION}")
    kind = document.get("type")
    if kind not in known_types:
        raise ValueError(f"type is {kind!r}, expected one of {', '.join(known_types)}")


def _describe(exc: ValueError) -> str:
    if not isinstance(exc, ValidationError):
        return str(exc)
    problems = (
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}" for error in exc.errors()
    )
    return "; ".join(problems)
