"""Field types shared by every wire model: UUID and UTC text forms, names, and the strict base model."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeAlias

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
MAX_BODY_BYTES = 64 * 1024
# No wire duration may exceed a week: a bound for the models; the service's policy caps are far lower.
MAX_WIRE_SECONDS = 7 * 24 * 3600


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


UuidText = Annotated[str, AfterValidator(_canonical_uuid), Field(json_schema_extra={"format": "uuid"})]
EventId = Annotated[str, AfterValidator(_canonical_uuid4), Field(json_schema_extra={"format": "uuid"})]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc)]
Name = Annotated[str, Field(min_length=1, max_length=255)]
WireSeverity: TypeAlias = Literal["moderate", "severe", "failed", "maintenance"]
ReplyType: TypeAlias = Literal["ready", "postpone", "register"]
# Strict: a JSON string "30", a float 30.5 or true is refused rather than silently converted.
Seconds = Annotated[int, Field(strict=True, ge=0, le=MAX_WIRE_SECONDS)]
# The outbox's sequence number: it starts at the outbox's creation time in milliseconds, so a re-created
# outbox still counts upwards (see INCARNATION_TEXT for what a tenant does with it).
INCARNATION_TEXT = (
    "Grows with every notice this host's service sends (not by one: it is the sequence number of the host's "
    "outbox). Compare it only between notices of the same `host`. A notice whose incarnation is lower than "
    "one you have already handled from that host is older: handle it if its event_id is new, but never let "
    "it overwrite what the newer notice said (a VM's deadline, for instance)."
)
Incarnation = Annotated[int, Field(strict=True, ge=1, description=INCARNATION_TEXT)]


class WireRejectCode(StrEnum):
    """Why a reply was refused: the closed list of `code`s a tenant can find in a `reply_rejected` notice."""

    MISSING_USER_ID = "missing_user_id"
    WRONG_ROUTING_KEY = "wrong_routing_key"
    MALFORMED_REPLY = "malformed_reply"
    REFUSED_REPLY = "refused_reply"
    UNKNOWN_VM = "unknown_vm"
    NO_PENDING_EVACUATION = "no_pending_evacuation"
    STALE_EVENT = "stale_event"
    DEADLINE_PASSED = "deadline_passed"
    NO_POSTPONE_ON_FAILED_HOST = "no_postpone_on_failed_host"
    POSTPONE_LIMIT_REACHED = "postpone_limit_reached"


class WireModel(BaseModel):
    """Every wire model: unknown fields are errors, instances are immutable."""

    # In serialization mode (the notices' published schemas) a field with a default is required: the service
    # always writes every field, null included.
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_serialization_defaults_required=True)
