"""The host state wire message: what each daemon publishes of its host on the peers exchange (routing key
`state.<host>`), how a receiver checks who sent it, and how it becomes placement's view.

A host's broker user may publish only `state.<itself>` (its topic permissions, host_users.py), and every
state carries the sender's user as `user_id`, which the broker checks against the connection's user. A
receiver believes a state only when that user is the user of the host both the routing key and the body
name: so no host can pass its state off as another's. Bounded: a body over MAX_STATE_BYTES, or with values
no host could have, is dropped before anything else looks at it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from evacuator.hypervisor.room import HostRoom
from evacuator.peers.host_users import host_user
from evacuator.peers.messages import PeerTrust
from evacuator.placement.model import HostState, Room, Verdict
from evacuator.placement.view import Heard
from notifiers.topology import check_word

MAX_STATE_BYTES = 64 * 1024
STATE_BINDING = "state.*"
_STATE_PREFIX = "state."

_EIB = 1 << 60  # no pool or memory of one host comes near it
_MAX_VCPUS = 1 << 20
_MAX_VMS = 100_000
_Bytes = Annotated[int, Field(ge=0, le=_EIB)]
_Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^\S+$")]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RoomWire(_Wire):
    """A host's room for guests (hypervisor/room.py HostRoom). Free memory and vCPUs may be negative: an
    overcommitted host."""

    memory_capacity_bytes: _Bytes
    memory_free_bytes: int = Field(ge=-_EIB, le=_EIB)
    vcpus_capacity: int = Field(ge=0, le=_MAX_VCPUS)
    vcpus_free: int = Field(ge=-_MAX_VCPUS, le=_MAX_VCPUS)
    pool_capacity_bytes: _Bytes
    pool_allocation_bytes: _Bytes
    pool_available_bytes: _Bytes
    running_vms: int = Field(ge=0, le=_MAX_VMS)
    # [tenant ("" for none), function] of the active VMs that have one.
    functions: list[tuple[Annotated[str, Field(max_length=128)], _Name]] = Field(max_length=1024)

    @classmethod
    def of(cls, room: HostRoom) -> RoomWire:
        return cls(memory_capacity_bytes=room.memory_capacity_bytes, memory_free_bytes=room.memory_free_bytes,
                   vcpus_capacity=room.vcpus_capacity, vcpus_free=room.vcpus_free,
                   pool_capacity_bytes=room.pool_capacity_bytes,
                   pool_allocation_bytes=room.pool_allocation_bytes,
                   pool_available_bytes=room.pool_available_bytes, running_vms=room.running_vms,
                   functions=sorted(room.functions))  # fmt: skip


class HostStateMessage(_Wire):
    """One host's state, as its own daemon publishes it on change and every `host_view.interval_seconds`."""

    schema_version: Literal[1] = 1
    host: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    # Random per daemon start; `sequence` counts the states of one start from 0.
    incarnation: str = Field(pattern=r"^[0-9a-f]{16,32}$")
    sequence: int = Field(ge=0, le=(1 << 63) - 1)
    sent_at: AwareDatetime
    verdict: Verdict
    reasons: list[Annotated[str, Field(max_length=200)]] = Field(max_length=16)
    quarantined: bool
    maintenance: bool
    accepting: bool
    room: RoomWire
    # Where a source reaches this host's libvirt and pool (host.advertised_libvirt_uri); absent (the
    # publisher leaves None out, so an older receiver still takes the state): only its peers send it VMs.
    libvirt_uri: str | None = Field(default=None, min_length=1, max_length=1024,
                                    pattern=r"^[a-z][a-z0-9+.-]*://\S*$")
    storage_pool: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")
    # Since when this host evacuates (moves/guard.py): other hosts count it against the blast-radius guards.
    evacuating_since: AwareDatetime | None = None
    # Since when this host is back in service and wants the VMs evacuated from it before then back
    # (return_to_service.move_back); absent when it wants none.
    move_back_since: AwareDatetime | None = None

    def heard(self, received_at: datetime) -> Heard:
        """The state as placement keeps it, seen at `received_at` (this daemon's clock)."""
        room = self.room
        return Heard(
            state=HostState(
                name=self.host, verdict=self.verdict, seen_at=received_at,
                capacity=Room(memory_bytes=room.memory_capacity_bytes, vcpus=room.vcpus_capacity,
                              disk_bytes=room.pool_capacity_bytes),
                free=Room(memory_bytes=room.memory_free_bytes, vcpus=room.vcpus_free,
                          disk_bytes=room.pool_available_bytes),
                quarantined=self.quarantined, maintenance=self.maintenance, accepting=self.accepting,
                functions=frozenset(room.functions),
            ),
            incarnation=self.incarnation, sequence=self.sequence, sent_at=self.sent_at,
            reasons=tuple(self.reasons), running_vms=room.running_vms,
            disk_allocation_bytes=room.pool_allocation_bytes,
            libvirt_uri=self.libvirt_uri if self.storage_pool is not None else None,
            storage_pool=self.storage_pool if self.libvirt_uri is not None else None,
            evacuating_since=self.evacuating_since, move_back_since=self.move_back_since,
        )  # fmt: skip


def state_routing_key(host: str) -> str:
    return f"{_STATE_PREFIX}{check_word('host', host)}"


def host_of_routing_key(routing_key: str) -> str | None:
    """The host a `state.<host>` key names; None for any other key."""
    host = routing_key.removeprefix(_STATE_PREFIX)
    return host if routing_key.startswith(_STATE_PREFIX) and host and "." not in host else None


def expected_user(trust: PeerTrust, host: str) -> str:
    """The broker user a state of `host` must carry: this daemon's own for itself, a configured peer's, or
    `host.<name>` (what `evacuator host add` makes) for any other host of the cloud."""
    peer = trust.user_of(host)
    return peer if peer is not None else host_user(host)


def sender_refusal(trust: PeerTrust, *, own_host: str, routing_key: str, body_host: str,
                   user_id: str | None) -> str | None:
    """Why a state must not be believed, None when it may: the key and the body name one host, and the
    broker-checked user_id is that host's user."""
    keyed = host_of_routing_key(routing_key)
    if keyed is None or keyed != body_host:
        return "the routing key and the body name different hosts"
    wanted = trust.own_user if body_host == own_host else expected_user(trust, body_host)
    if user_id != wanted:
        return "not sent by that host's broker user"
    return None
