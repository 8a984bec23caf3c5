"""The service's YAML settings: pydantic models at the boundary and the one loader that validates a file."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

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

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")


def _address(value: str) -> str:
    """An IP address or a DNS name, nothing more (no port, no scheme): the message never echoes the value."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _DNS_NAME.match(value):
            raise ValueError("expected an IP address or a host name (no port, no scheme)") from None
    return value


# An address on the migration network: resolving a name is the data channel's job at start-up.
_ADDRESS = Annotated[str, AfterValidator(_address)]
# A broker user name as RabbitMQ takes it on the command line and in user_id: no spaces or controls.
_BROKER_USER = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.@+=-]+$")]
# Where a peer's libvirt_uri names no host (qemu:///system, a unix socket), the peer is this machine.
_LOOPBACK = ("127.0.0.1", "::1")


class _Strict(BaseModel):
    # hide_input_in_errors: a ValidationError's text never echoes what was given (the whole file, with its
    # passwords, for a model-level error); parse_settings' own messages do not either.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class HostSettings(_Strict):
    """This hypervisor: its name in notices and its own libvirt."""

    name: _NAME
    libvirt_uri: str = "qemu:///system"
    storage_pool: str = "evacuator"
    # This host's address on the migration network: where peers reach its data channel, and the address
    # that channel listens on unless data_channel.listen_address says otherwise.
    migration_address: _ADDRESS | None = None
    # How other hosts' daemons reach this host's libvirt (qemu+tls://hv-12.example.net/system): published in
    # its host state so that, with placement.scope cloud, a host that does not list it as a peer may send it
    # VMs. Required with scope cloud; None: not published.
    advertised_libvirt_uri: str | None = Field(default=None, min_length=1, max_length=1024,
                                               pattern=r"^[a-z][a-z0-9+.-]*://\S*$")


class PeerSettings(_Strict):
    """A hypervisor that may receive this host's VMs, tried in the order listed."""

    name: _NAME
    libvirt_uri: str
    storage_pool: str = "evacuator"
    # The peer's address on the migration network: where it connects from, and where its data channel
    # listens. None: the host its libvirt_uri names.
    migration_address: _ADDRESS | None = None
    # The peer daemon's own broker user, the user_id its messages carry; None: host.<name> (tenant names
    # hold no dot, so a host's user never collides with a tenant's).
    broker_user: _BROKER_USER | None = None

    @property
    def user(self) -> str:
        """The broker user the peer's daemon is: `broker_user`, or `host.<name>`."""
        return self.broker_user if self.broker_user is not None else f"host.{self.name}"

    @property
    def address(self) -> str | None:
        """Where this peer connects from: `migration_address`, else its libvirt_uri's host, else None (the
        URI names no host: the peer runs on this machine)."""
        if self.migration_address is not None:
            return self.migration_address
        try:
            return urlsplit(self.libvirt_uri).hostname
        except ValueError:
            return None


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
    # Once a window opens, choose and claim the move's destination and copy the running VM's disks there
    # while the tenant preprocesses: a pass when a transfer slot is free (given up to any move that waits for
    # one), then every precopy_pass_interval_seconds only the blocks that changed; once the VM is off only
    # the blocks changed since travel, and the whole disk is verified as always (docs/moves.md).
    precopy_during_window: bool = True
    precopy_pass_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Counted on the broker (evacuator/peers/cloud_slots.py): transfers at once in the whole cloud (None: no
    # cap), and whether max_incoming_moves_per_peer holds for all sources together, not each on its own.
    max_total_transfers: int | None = Field(default=None, ge=1)
    incoming_caps_cloud_wide: bool = False
    # How long a move waits for a cloud-wide slot before it goes ahead without one (a failed host's move:
    # 2 s at most), so a host holding the slots delays the others' evacuations and never stalls them.
    cloud_slot_max_wait_seconds: float = Field(default=300.0, gt=0, le=86_400)
    # What the daemon does for a moderate, a severe and a failed verdict: evacuate (tell the tenants, wait
    # out their windows, move), notify (tell each tenant its VMs are on a sick host, host_at_risk, and move
    # nothing: the tenant may act on its own), or quarantine only (the host takes no VMs, nothing moves: for
    # a sensor or a detector an admin does not trust yet). A sick host takes no new VMs whatever the action.
    on_moderate: Literal["evacuate", "notify", "quarantine"] = "quarantine"
    on_severe: Literal["evacuate", "notify", "quarantine"] = "evacuate"
    on_failed: Literal["evacuate", "notify", "quarantine"] = "evacuate"
    # manual: an evacuation waits for `evacuator approve` (or `reject`) before any tenant is told (VMware
    # Proactive HA's manual mode); automatic: it begins at once. Per severity: a failed host's VMs are on
    # dying hardware, so think twice before making it wait for a person.
    approval_moderate: Literal["automatic", "manual"] = "automatic"
    approval_severe: Literal["automatic", "manual"] = "automatic"
    approval_failed: Literal["automatic", "manual"] = "automatic"

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
    # None: host.migration_address (one of the two must be set while the channel is on: never every
    # interface by default).
    listen_address: _ADDRESS | None = None
    # 0: any free port (tickets name the port; a firewall wants a fixed one).
    port: int = Field(default=16529, ge=0, le=65535)
    # Where peers reach this host's channel; None: host.migration_address, else the address they reach its
    # libvirt at.
    advertise_address: str | None = Field(default=None, min_length=1, max_length=255)
    # "tls": always TLS, and this host takes none in clear; "none": clear text wherever the peer allows, for
    # a trusted migration network only; "auto" (kept for older files): TLS unless the peer's libvirt_uri is
    # clear text (qemu+tcp), and this host takes clear text too. The copy's digest checks every byte end to
    # end either way.
    encryption: Encryption = "tls"
    # The addresses this channel takes connections from; None: each peer's migration_address, else the
    # host of its libvirt_uri (Settings.data_channel_allowed_addresses).
    allow_from: list[_ADDRESS] | None = Field(default=None, min_length=1)
    stall_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    max_transfers: int = Field(default=4, ge=1, le=64)


class HostViewSettings(_Strict):
    """Each daemon's state on the peers exchange (README, "Host view"): how often, and how long believed."""

    # Published on change and at least this often: the broker carries hosts / interval states a second,
    # each to every host.
    interval_seconds: float = Field(default=5.0, ge=0.5, le=300)
    # A host not heard from for this long is unknown, never a destination; None: 3 intervals.
    stale_after_seconds: float | None = Field(default=None, gt=0, le=3600)

    @model_validator(mode="after")
    def _stale_after_an_interval(self) -> HostViewSettings:
        if self.stale_after_seconds is not None and self.stale_after_seconds <= self.interval_seconds:
            raise ValueError("stale_after_seconds must exceed interval_seconds: a live host would go stale "
                             "between two of its states")  # fmt: skip
        return self

    @property
    def stale_after(self) -> float:
        return 3 * self.interval_seconds if self.stale_after_seconds is None else self.stale_after_seconds


class PlacementSettings(_Strict):
    """What this host offers its peers' evacuated VMs, as its state tells them."""

    # Caps on the guests' memory and vCPUs; None: what libvirt reports of the node.
    guest_memory_bytes: int | None = Field(default=None, ge=0, le=1 << 60)
    guest_vcpus: int | None = Field(default=None, ge=0, le=1 << 20)
    # false: this host takes no evacuated VMs (it still evacuates its own).
    accepting: bool = True
    # true: in maintenance, this host takes no VMs.
    maintenance: bool = False
    # true: the daemon sends each VM where placement says over the host view, holding a claim on the
    # destination's room; false: to `peers` in order, unchecked (a cloud without the host view).
    use_host_view: bool = True
    # Share of each resource a destination keeps free after an evacuation (for its own VMs' growth): used
    # when this host places VMs and when it answers claims on its own room.
    reserve_fraction: float = Field(default=0.05, ge=0.0, le=0.9)
    # How long a destination holds a claim unless released; a mover that dies leaves it this long. The
    # destination caps it at 2 h.
    claim_ttl_seconds: int = Field(default=3600, ge=60, le=7200)
    # Which hosts this daemon sends VMs to and answers (claims, tickets, digests). "peers": the `peers` list
    # only. "cloud": any host of the cloud heard on the host view that publishes its libvirt URI
    # (host.advertised_libvirt_uri), the peers first; a host is known by its broker user host.<name>, which
    # only `evacuator host add` makes. Every host of a cloud-scope cloud sets it (docs/security.md).
    scope: Literal["peers", "cloud"] = "peers"


class GuardSettings(_Strict):
    """Blast-radius guards, counted cloud-wide (README, "Guard rails"): the same values on every host."""

    # false: no guards (a cloud without the host view has none either); `evacuator pause` still holds.
    enabled: bool = True
    # At most this share of the cloud's hosts evacuate at once (rounded down, at least one): 25% as Windows
    # failover clusters quarantine at most; a failed host never waits.
    max_evacuating_share: float = Field(default=0.25, gt=0, le=1)
    # No severe host starts when its VMs would leave the cloud's hosts that take VMs with less than this share
    # of their memory, vCPUs or pool bytes free.
    min_free_share: float = Field(default=0.10, ge=0, lt=1)
    # Between two severe hosts' starts, cloud-wide (draino spaces drains 10 minutes apart).
    min_start_spacing_seconds: float = Field(default=600.0, ge=0, le=86_400)
    # How often a held host looks again (and how soon a pause stops new moves).
    poll_seconds: float = Field(default=0.5, gt=0, le=60)


class ReturnToServiceSettings(_Strict):
    """A sick host that recovers (README, "Return to service"): once its detector's hold-down has passed
    (monitors.hold_down_seconds) it is healthy, a destination again, and optionally given back its VMs."""

    # true: once in service again (healthy, not drained), this host asks for the VMs evacuated or drained
    # from it before then; each host running one offers it back through the tenant contract (notice, window,
    # ready or postpone) under the guards, once. Off by default: a move back is one more shutdown for the
    # tenant.
    move_back: bool = False


class ReplyPolicySettings(_Strict):
    """What tenants' replies may ask for: caps on postponing (the longest window is evacuation's cap)."""

    max_postpone_seconds: int = Field(default=1800, ge=0)
    severe_hard_limit_seconds: int = Field(default=7200, ge=0)


class MetricsSettings(_Strict):
    """Prometheus metrics (evacuator/metrics.py) on http://<listen_address>:<port>/metrics."""

    enabled: bool = True
    # Loopback by default: a scraper on the host, or a node_exporter-style proxy, reaches it; nothing else.
    listen_address: str = "127.0.0.1"
    port: int = Field(default=9469, ge=0, le=65535)  # 0: any free port, logged as metrics_listening


class LoggingSettings(_Strict):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(_Strict):
    """The whole settings file (config/evacuator.example.yaml documents every field)."""

    host: HostSettings
    # The admin's destinations, in order: the only ones with placement.scope peers (at least one then), the
    # preferred ones with scope cloud (may be empty).
    peers: list[PeerSettings] = Field(default_factory=list)
    monitors: MonitorsSettings = Field(default_factory=MonitorsSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    evacuation: EvacuationSettings = Field(default_factory=EvacuationSettings)
    data_channel: DataChannelSettings = Field(default_factory=DataChannelSettings)
    replies: ReplyPolicySettings = Field(default_factory=ReplyPolicySettings)
    host_view: HostViewSettings = Field(default_factory=HostViewSettings)
    placement: PlacementSettings = Field(default_factory=PlacementSettings)
    guards: GuardSettings = Field(default_factory=GuardSettings)
    return_to_service: ReturnToServiceSettings = Field(default_factory=ReturnToServiceSettings)
    state_dir: Path = Path("/var/lib/evacuator")
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @model_validator(mode="after")
    def _move_back_is_heard(self) -> Settings:
        if self.return_to_service.move_back and not self.placement.use_host_view:
            raise ValueError("return_to_service.move_back needs placement.use_host_view: a host asks for its "
                             "VMs back on the host view")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _scope_is_complete(self) -> Settings:
        if self.placement.scope == "peers":
            if not self.peers:
                raise ValueError("peers must list at least one host, unless placement.scope is cloud")
            return self
        if not self.placement.use_host_view:
            raise ValueError("placement.scope cloud needs placement.use_host_view: the cloud's hosts are "
                             "known from the host view only")  # fmt: skip
        if self.host.advertised_libvirt_uri is None:
            raise ValueError("placement.scope cloud needs host.advertised_libvirt_uri: how the cloud's other "
                             "hosts reach this host's libvirt")  # fmt: skip
        if self.data_channel.enabled and self.data_channel.allow_from is None:
            raise ValueError("placement.scope cloud needs data_channel.allow_from (the migration network's "
                             "addresses): any host of the cloud may send this host a copy, and the peers "
                             "list names only some of them")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _peers_are_others(self) -> Settings:
        # The messages name positions, never values: a model-level error must not echo the file.
        names = [p.name for p in self.peers]
        if self.host.name in names:
            index = names.index(self.host.name)
            raise ValueError(f"peers[{index}].name is host.name: peers must not include this host")
        if len(set(names)) != len(names):
            raise ValueError("peer names must be unique")
        users = [p.user for p in self.peers]
        if len(set(users)) != len(users):
            raise ValueError("peers' broker users (broker_user, default host.<name>) must be unique: a "
                             "message's user_id names exactly one peer")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _channel_has_an_address(self) -> Settings:
        if self.data_channel.enabled and self.data_channel_listen_address() is None:
            raise ValueError(
                "data_channel.listen_address or host.migration_address must be set while data_channel is "
                "enabled: the channel listens on this host's migration network address only (never on every "
                "interface by default, where anyone could reach it); or set data_channel.enabled: false"
            )
        return self

    def data_channel_listen_address(self) -> str | None:
        """Where the data channel listens: data_channel.listen_address, else host.migration_address (None only
        while the channel is disabled)."""
        return self.data_channel.listen_address or self.host.migration_address

    def data_channel_advertise_address(self) -> str | None:
        """Where peers reach the data channel: data_channel.advertise_address, else host.migration_address;
        None: the address their libvirt_uri names for this host."""
        return self.data_channel.advertise_address or self.host.migration_address

    def data_channel_allowed_addresses(self) -> tuple[str, ...]:
        """The addresses (or names, resolved by the channel at start-up) the data channel takes connections
        from, in order, without repeats: data_channel.allow_from, else each peer's address
        (PeerSettings.address), loopback for a peer whose libvirt_uri names no host."""
        if self.data_channel.allow_from is not None:
            return tuple(dict.fromkeys(self.data_channel.allow_from))
        found: list[str] = []
        for peer in self.peers:
            address = peer.address
            found.extend(_LOOPBACK if address is None else (address,))
        return tuple(dict.fromkeys(found))


# An unknown key is named in an error only when it looks like a field name (ours are all snake_case): a key
# that does not may be a value typed where a key was meant (`{amqp://user:PASSWORD@mq}` is a mapping).
_FIELD_LIKE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "(top level)"


def _describe(error: ValidationError, path: Path) -> str:
    """One line per error: the field's path and what was expected, never the value given (any field may
    hold a secret, or be the neighbour of one in a model-level error's input)."""
    lines = [f"{path}: invalid settings"]
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        loc = item["loc"]
        if item["type"] == "extra_forbidden":
            key = str(loc[-1]) if loc else ""
            if _FIELD_LIKE.match(key):
                lines.append(f"  {_field_path(loc)}: unknown field")
            else:
                where = _field_path(loc[:-1]) if len(loc) > 1 else "(top level)"
                lines.append(f"  {where}: an unknown field whose name is not shown (not a field name: it may "
                             "hold a secret)")  # fmt: skip
            continue
        message = item["msg"].removeprefix("Value error, ")  # our validators' own words, said plainly
        lines.append(f"  {_field_path(loc)}: {message}")
    return "\n".join(lines)


# What went wrong, by PyYAML's error class, in our words: its own problem texts quote pieces of the input.
_YAML_KINDS: dict[type[yaml.YAMLError], str] = {
    yaml.scanner.ScannerError: "a token cannot be read here: an unclosed quote, a bad escape, a tab, or a "
    "character that cannot start a value?",
    yaml.parser.ParserError: "the structure breaks here: an unclosed bracket, brace or quote, or a wrong "
    "indentation?",
    yaml.composer.ComposerError: "an alias (*name) or anchor (&name) is wrong",
    yaml.constructor.ConstructorError: "a tag (!name) or a key that cannot be read: write plain values",
}


def _position(mark: yaml.Mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_error(exc: yaml.YAMLError, text: str, path: Path) -> str:
    """The file, line and column only: PyYAML's own message quotes the line (`password: {S3cret...`), and
    its problem texts quote tags, aliases and characters of the input."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        kind = next((why for cls, why in _YAML_KINDS.items() if isinstance(exc, cls)), "a syntax error")
        where = _position(exc.problem_mark)
        if exc.context_mark is not None and exc.context_mark.line != exc.problem_mark.line:
            where += f" (in what starts at {_position(exc.context_mark)})"
        return f"{path}: not valid YAML at {where}: {kind}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return f"{path}: not valid YAML at line {line}, column {column}: a character YAML does not allow"
    return f"{path}: not valid YAML"


def parse_settings(text: str, path: Path) -> Settings:
    """Validate YAML text; `path` only names the source in error messages, which never echo a value."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(exc, text, path)) from None
    except (ValueError, OverflowError, RecursionError):
        # A date that does not exist (2024-13-01), an integer of thousands of digits, nesting thousands deep.
        raise ConfigError(f"{path}: not valid YAML: a value that cannot be read (an impossible date, a "
                          "number too long, or nesting too deep)") from None  # fmt: skip
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def load_settings(path: Path) -> Settings:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
    return parse_settings(text, path)
