"""SIGHUP's reload: which settings changed, which a running daemon takes (its policy), and handing those on.

A changed setting that only a restart can take is reported, not used.

Why only policy: the detector's thresholds, the windows, the replies' caps, what each severity leads to and
the guards are read afresh at every decision, so a new value simply applies from the next one. Everything else
(the broker, this host's name and libvirt, state_dir, the data channel, the sensor sources, the poll interval,
the engine's caps and timeouts, placement, metrics, logging) is built into connections, threads, sockets and
files at start: changing it under them would need the same care as a restart, which systemd does well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from evacuator.errors import ConfigError
from evacuator.incident.reply_desk import ReplyDesk
from evacuator.incident.service import Service
from evacuator.moves.guard import CloudGuard
from evacuator.settings import Settings, load_settings
from evacuator.wiring.host_view import guard_policy
from evacuator.wiring.incident import evacuation_policy, reply_policy, window_policy
from monitors.detector import Detector

log = structlog.get_logger(__name__)

# The settings a reload applies, each a field or a whole section (docs/operations.md, "Reloading").
RELOADABLE: tuple[str, ...] = (
    "monitors.temperature",
    "monitors.memory",
    "monitors.stale_after_seconds",
    "monitors.hold_down_seconds",
    "monitors.flap_max_per_hour",
    "evacuation.default_window_seconds",
    "evacuation.max_window_seconds",
    "evacuation.on_moderate",
    "evacuation.on_severe",
    "evacuation.on_failed",
    "evacuation.approval_moderate",
    "evacuation.approval_severe",
    "evacuation.approval_failed",
    "replies",
    "guards",
)
_SECTIONS = ("monitors", "evacuation", "replies", "guards")  # the sections that hold a reloadable field


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """A policy setting a reload applies: its dotted path, what it was and what it is now."""

    field: str
    old: object
    new: object


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadPlan:
    """What a reload does: the settings the daemon runs on from now (the new policy, everything else as it
    was), the changes applied, and the paths of the changes left for a restart (paths only: any of those
    values may be a secret, a broker URL's password say)."""

    settings: Settings
    applied: tuple[Change, ...]
    needs_restart: tuple[str, ...]


def is_reloadable(path: str) -> bool:
    return any(path == field or path.startswith(field + ".") for field in RELOADABLE)


def plan_reload(current: Settings, new: Settings) -> ReloadPlan:
    """Pure: compares the settings in force with a file's; raises ConfigError when the new policy does not
    fit the settings that stay as they are until a restart (a stale limit under the running poll interval)."""
    before, after = _leaves(current.model_dump()), _leaves(new.model_dump())
    changed = sorted(p for p in before.keys() | after.keys()
                     if before.get(p, _ABSENT) != after.get(p, _ABSENT))  # fmt: skip
    applied = tuple(Change(field=p, old=before.get(p), new=after.get(p)) for p in changed if is_reloadable(p))
    needs_restart = tuple(p for p in changed if not is_reloadable(p))
    update = {name: _merged(getattr(current, name), name, applied) for name in _SECTIONS}
    return ReloadPlan(settings=current.model_copy(update=update), applied=applied,
                      needs_restart=needs_restart)  # fmt: skip


class _Absent:
    """A field one side has and the other has not (inside a list's items): never equal to a value."""


_ABSENT = _Absent()


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every field's value by dotted path; a list is one value (its items have no stable path)."""
    found: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(_leaves(value, path + "."))
        else:
            found[path] = value
    return found


def _merged(section: BaseModel, name: str, applied: tuple[Change, ...]) -> BaseModel:
    """`section` with the applied changes under it, validated again as a whole: its rules hold across fields
    (monitors.stale_after_seconds must exceed poll_interval_seconds, which is not reloaded)."""
    data = section.model_dump()
    for change in applied:
        if change.field.startswith(name + "."):
            *parents, leaf = change.field.split(".")[1:]
            target = data
            for part in parents:
                target = target[part]
            target[leaf] = change.new
    try:
        return type(section).model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join([name, *map(str, e["loc"])]) if e["loc"] else name
                           for e in exc.errors(include_url=False, include_input=False))  # fmt: skip
        raise ConfigError(f"the new {name} settings do not fit those in force until a restart ({fields}): "
                          "change them together, then restart the daemon") from None  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyHolders:
    """The daemon's parts that decide with a policy, each handed the reloaded one."""

    detector: Detector
    service: Service
    desk: ReplyDesk
    guard: CloudGuard | None  # None without the host view: no guards to change

    def apply(self, settings: Settings) -> None:
        self.detector.reconfigure(settings.monitors.to_policy())
        # Each part swaps one reference, so a thread deciding at that moment uses the old policy or the new,
        # whole; tests/unit/test_reload.py checks each part decides with the new one.
        self.service.reconfigure(window_policy=window_policy(settings), reply_policy=reply_policy(settings),
                                 evacuation=evacuation_policy(settings))  # fmt: skip
        self.desk.reconfigure(reply_policy(settings))
        if self.guard is not None:
            self.guard.reconfigure(guard_policy(settings), poll_seconds=settings.guards.poll_seconds)


def reload_settings(path: Path, current: Settings, holders: PolicyHolders) -> Settings:
    """Reads `path` again and applies its policy; the settings in force afterwards. A file that cannot be
    used changes nothing (`reload_refused`, with the reason, which never holds a value from the file)."""
    try:
        plan = plan_reload(current, load_settings(path))
    except ConfigError as exc:
        log.error("reload_refused", config=str(path), error=str(exc), kept="the settings in force")
        return current
    holders.apply(plan.settings)
    log.info("settings_reloaded", config=str(path), applied=[c.field for c in plan.applied],
             changes={c.field: {"old": c.old, "new": c.new} for c in plan.applied},
             needs_restart=list(plan.needs_restart))  # fmt: skip
    if plan.needs_restart:
        log.warning("settings_need_restart", config=str(path), fields=list(plan.needs_restart),
                    hint="systemctl restart evacuator applies them")  # fmt: skip
    return plan.settings
