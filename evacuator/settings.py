"""The service's YAML settings: pydantic models at the boundary and the one loader that validates a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from evacuator.errors import ConfigError
from evacuator.transfer.wire import Encryption
from monitors.settings import MonitorsSettings
from notifiers.settings import BrokerSettings
from notifiers.topology import BROADCAST_HOST


def _not_broadcast(name: str) -> str:
    if name == BROADCAST_HOST:
        raise ValueError(f"{name!r} is reserved: tenants' replies to {name!r} reach every host")
    return name


_NAME = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
                  AfterValidator(_not_broadcast)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostSettings(_Strict):
    """This hypervisor: its name in notices and its own libvirt."""

    name: _NAME
    libvirt_uri: str = "qemu:///system"
    storage_pool: str = "evacuator"


class PeerSettings(_Strict):
    """A hypervisor that may receive this host's VMs, tried in the order listed."""

    name: _NAME
    libvirt_uri: str
    storage_pool: str = "evacuator"


class EvacuationSettings(_Strict):
    """How long tenants get, and how long a guest gets to shut down."""

    default_window_seconds: int = Field(default=600, ge=0)
    max_window_seconds: int = Field(default=3600, ge=0)
    shutdown_timeout_seconds: float = Field(default=120.0, gt=0)
    move_attempts: int = Field(default=3, ge=1)
    retry_initial_seconds: float = Field(default=2.0, ge=0)
    retry_max_seconds: float = Field(default=30.0, ge=0)
    copy_timeout_base_seconds: float = Field(default=60.0, gt=0)
    copy_min_bytes_per_second: int = Field(default=10 * 1024 * 1024, gt=0)
    max_outgoing_moves: int = Field(default=2, ge=1)
    max_incoming_moves_per_peer: int = Field(default=2, ge=1)
    quiesce_ahead_moves: int = Field(default=2, ge=0)
    # Copy a running VM's disks while it shuts down, when a transfer slot is free at once; once it is off,
    # only the blocks read before that are read again, and those that changed written (docs/moves.md).
    precopy_during_shutdown: bool = True
    # Counted on the broker (evacuator/peers/cloud_slots.py): transfers at once in the whole cloud (None: no
    # cap), and whether max_incoming_moves_per_peer holds for all sources together, not each on its own.
    max_total_transfers: int | None = Field(default=None, ge=1)
    incoming_caps_cloud_wide: bool = False

    @model_validator(mode="after")
    def _default_within_cap(self) -> EvacuationSettings:
        if self.default_window_seconds > self.max_window_seconds:
            raise ValueError("default_window_seconds must not exceed max_window_seconds")
        return self

    @property
    def cloud_wide_incoming_cap(self) -> int | None:
        """The cap into each destination counted on the broker across all sources, None when it is each
        source host's own."""
        return self.max_incoming_moves_per_peer if self.incoming_caps_cloud_wide else None


class DataChannelSettings(_Strict):
    """The hosts' own channel for disk copies (docs/moves.md, "Data channel"): this host's daemon writes the
    copies it receives itself, about three times faster than a libvirt upload; movers fall back to libvirt
    when a peer's daemon does not take a copy."""

    enabled: bool = True
    listen_address: str = Field(default="0.0.0.0", min_length=1, max_length=255)
    # 0: any free port (tickets name the port; a firewall wants a fixed one).
    port: int = Field(default=16529, ge=0, le=65535)
    # Where peers reach this host's channel; None: the address they reach its libvirt at.
    advertise_address: str | None = Field(default=None, min_length=1, max_length=255)
    # "auto": copies go as libvirt reaches each peer, TLS unless its libvirt_uri is clear text (qemu+tcp);
    # "tls": always TLS, and this host takes none in clear; "none": clear text wherever the peer allows, for
    # a trusted migration network only. The copy's digest checks every byte end to end either way.
    encryption: Encryption = "auto"
    stall_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    max_transfers: int = Field(default=4, ge=1, le=64)


class ReplyPolicySettings(_Strict):
    """What tenants' replies may ask for: caps on postponing (the longest window is evacuation's cap)."""

    max_postpone_seconds: int = Field(default=1800, ge=0)
    severe_hard_limit_seconds: int = Field(default=7200, ge=0)


class LoggingSettings(_Strict):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Strict):
    """The whole settings file (config/evacuator.example.yaml documents every field)."""

    host: HostSettings
    peers: list[PeerSettings] = Field(min_length=1)
    monitors: MonitorsSettings = Field(default_factory=MonitorsSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    evacuation: EvacuationSettings = Field(default_factory=EvacuationSettings)
    data_channel: DataChannelSettings = Field(default_factory=DataChannelSettings)
    replies: ReplyPolicySettings = Field(default_factory=ReplyPolicySettings)
    state_dir: Path = Path("/var/lib/evacuator")
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _peers_are_others(self) -> Settings:
        names = [p.name for p in self.peers]
        if self.host.name in names:
            raise ValueError(f"peers must not include this host ({self.host.name})")
        if len(set(names)) != len(names):
            raise ValueError("peer names must be unique")
        return self


# Fields whose value may hold a credential: an error names them but never echoes what was given.
_SECRET_FIELDS = frozenset({"url", "password", "libvirt_uri"})


def _describe(error: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid settings"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {field}: unknown field")
        elif _SECRET_FIELDS & {str(part) for part in item["loc"]}:
            lines.append(f"  {field}: {item['msg']}")
        else:
            lines.append(f"  {field}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_settings(text: str, path: Path) -> Settings:
    """Validate YAML text; `path` only names the source in error messages."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc


def load_settings(path: Path) -> Settings:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings: {exc.strerror}") from exc
    return parse_settings(text, path)
