"""Field types shared by every wire model: UUID and UTC text forms, names, and the strict base model."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
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
WireSeverity: TypeAlias = Literal["moderate", "severe", "failed"]
ReplyType: TypeAlias = Literal["ready", "postpone", "register"]
# Strict: a JSON string "30", a float 30.5 or true is refused rather than silently converted.
Seconds = Annotated[int, Field(strict=True, ge=0, le=MAX_WIRE_SECONDS)]
# Increases with every notice one host's service sends (the outbox's sequence, which starts at the
# outbox's creation time in milliseconds so a re-created outbox still counts upwards): a tenant keeps the
# highest it has seen per host to order notices, and drops a notice whose event_id it has already handled.
Incarnation = Annotated[int, Field(strict=True, ge=1)]


class WireModel(BaseModel):
    """Every wire model: unknown fields are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
