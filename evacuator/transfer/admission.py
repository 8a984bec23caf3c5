"""Which connections the data channel takes before they show a ticket: only from its peers' addresses, and
only so many at once from each, so that no one address can hold the room the others need.

The allowlist is addresses and networks as written, and names resolved once, at start-up, to all their
addresses (a name that does not resolve then is logged and left out: a restart picks it up). A refused
connection is closed at once, before any TLS; refusals and failed hellos are logged at most once a minute
per address, and at most `LOG_LINES_PER_INTERVAL` lines a minute in all, each line counting those that were
not logged.
"""

from __future__ import annotations

import collections
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

# Fairness is per address; the cap on all together only bounds the threads, high enough that it takes dozens
# of the peers' addresses to reach it.
MAX_UNPROVEN = 256
MAX_UNPROVEN_PER_ADDRESS = 4  # a mover shows its ticket within milliseconds; a few copies start at once
LOG_INTERVAL_SECONDS = 60.0
LOG_LINES_PER_INTERVAL = 20
_ADDRESSES_REMEMBERED = 1024

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str], Iterable[str]]
"""A name to the addresses it stands for (getaddrinfo's; the tests' fakes); OSError when it names none."""


def resolve_name(name: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)})


def peer_address(raw: str) -> Address:
    """The address a connection came from, an IPv4 peer of a dual-stack socket as plain IPv4."""
    address = ipaddress.ip_address(raw.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def allowed_networks(entries: Iterable[str], *, host: str, resolve: Resolve = resolve_name,
                     ) -> tuple[Network, ...]:
    """Each entry as the address or network it writes, or the addresses its name resolves to now."""
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass  # a name, not an address
        try:
            addresses = [peer_address(found) for found in resolve(entry)]
        except (OSError, ValueError) as exc:
            log.error("data_channel_peer_unresolved", host=host, peer_address=entry, error=str(exc))
            continue
        networks.extend(ipaddress.ip_network(address) for address in addresses)
    return tuple(dict.fromkeys(networks))


@dataclass(slots=True)
class _Said:
    at: float
    unsaid: int = 0


class RateLimitedLog:
    """Thread-safe: a warning per address at most once per interval, and at most so many lines per interval
    in all; each line carries how many were left unsaid for that address (`not_logged`)."""

    def __init__(self, *, interval_seconds: float = LOG_INTERVAL_SECONDS,
                 lines_per_interval: int = LOG_LINES_PER_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_seconds = interval_seconds
        self._lines_per_interval = lines_per_interval
        self._clock = clock
        self._said: collections.OrderedDict[Address, _Said] = collections.OrderedDict()
        self._window: tuple[float, int] = (float("-inf"), 0)  # (began, lines said in it)
        self._lock = threading.Lock()

    def warning(self, event: str, *, address: Address, **context: object) -> None:
        now = self._clock()
        with self._lock:
            said = self._said.get(address)
            began, lines = self._window
            if now - began >= self._interval_seconds:
                began, lines = now, 0
            recent = said is not None and now - said.at < self._interval_seconds
            if recent or lines >= self._lines_per_interval:
                if said is None:
                    said = self._remember(address, _Said(at=float("-inf")))
                said.unsaid += 1
                return
            unsaid = 0 if said is None else said.unsaid
            self._remember(address, _Said(at=now))
            self._window = (began, lines + 1)
        log.warning(event, peer=str(address), not_logged=unsaid, **context)

    def _remember(self, address: Address, said: _Said) -> _Said:
        self._said.pop(address, None)
        self._said[address] = said
        while len(self._said) > _ADDRESSES_REMEMBERED:
            self._said.popitem(last=False)
        return said


class Admission:
    """Thread-safe: admits a connection from an allowed address while that address, and all together, hold
    fewer unproven connections than their limits; the caller `release`s each admitted one once it has
    shown a valid ticket or is closed."""

    def __init__(self, *, host: str, allowed: Collection[Network], max_unproven: int = MAX_UNPROVEN,
                 max_unproven_per_address: int = MAX_UNPROVEN_PER_ADDRESS, said: RateLimitedLog) -> None:
        self._host = host
        self._allowed = tuple(allowed)
        self._max_unproven = max_unproven
        self._max_per_address = max_unproven_per_address
        self._said = said
        self._unproven: collections.Counter[Address] = collections.Counter()
        self._lock = threading.Lock()

    def admit(self, raw_address: str) -> Address | None:
        """The connection's address when it is admitted; None when refused (logged, rate-limited)."""
        address = peer_address(raw_address)
        if not any(address in network for network in self._allowed):
            reason = "not a peer's address"
        else:
            with self._lock:
                if self._unproven[address] >= self._max_per_address:
                    reason = "too many connections from this address without a ticket"
                elif self._unproven.total() >= self._max_unproven:
                    reason = "too many connections without a ticket"
                else:
                    self._unproven[address] += 1
                    return address
        self._said.warning("data_channel_connection_refused", address=address, host=self._host, reason=reason)
        return None

    def release(self, address: Address) -> None:
        with self._lock:
            self._unproven[address] -= 1
            if self._unproven[address] <= 0:
                del self._unproven[address]
