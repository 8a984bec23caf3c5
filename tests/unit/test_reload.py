"""SIGHUP's reload (wiring/reload.py): which changed settings a running daemon takes and which wait for a
restart, and that each part holding a policy decides with the reloaded one (real parts over the fakes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from evacuator.errors import ConfigError
from evacuator.moves.guard import CloudGuard
from evacuator.settings import Settings
from evacuator.wiring.reload import PolicyHolders, is_reloadable, plan_reload, reload_settings
from monitors.detector import Detector
from monitors.verdicts import Severity
from notifiers.messages import RegisterReply
from tests.fakes.guards import FakeGuardState, FakeGuardView
from tests.unit.test_guards import CLOUD, gate
from tests.unit.test_reply_desk import VM, Desk
from tests.unit.test_service import T0, World, verdict

SECRET = "s3cret-Pa55"


def settings_with(**sections: dict[str, Any]) -> Settings:
    base: dict[str, Any] = {
        "host": {"name": "hv-01", "migration_address": "10.0.0.1"},
        "peers": [{"name": "hv-02", "libvirt_uri": "qemu+tls://hv-02/system"}],
        "broker": {"url": f"amqp://hv-01:{SECRET}@mq.example.net:5672/evacuator"},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings.model_validate(base)


@pytest.mark.parametrize(("path", "reloadable"), [
    ("monitors.temperature.threshold_celsius", True),
    ("monitors.memory.ce_threshold", True),
    ("monitors.hold_down_seconds", True),
    ("monitors.poll_interval_seconds", False),
    ("monitors.sources.ipmi.enabled", False),
    ("monitors.sysfs_root", False),
    ("evacuation.default_window_seconds", True),
    ("evacuation.on_severe", True),
    ("evacuation.approval_failed", True),
    ("evacuation.move_attempts", False),
    ("evacuation.max_outgoing_moves", False),
    ("replies.max_postpone_seconds", True),
    ("guards.max_evacuating_share", True),
    ("guards.enabled", True),
    ("broker.url", False),
    ("host.name", False),
    ("host.libvirt_uri", False),
    ("state_dir", False),
    ("data_channel.port", False),
    ("peers", False),
    ("placement.maintenance", False),
    ("metrics.port", False),
])  # fmt: skip
def test_policy_is_reloadable_and_what_is_built_at_start_is_not(path: str, reloadable: bool) -> None:
    assert is_reloadable(path) is reloadable


def test_a_changed_threshold_is_applied_with_its_old_and_new_values() -> None:
    current = settings_with(monitors={"temperature": {"threshold_celsius": 90}})
    new = settings_with(monitors={"temperature": {"threshold_celsius": 80}})
    plan = plan_reload(current, new)
    changed = [(c.field, c.old, c.new) for c in plan.applied]
    assert changed == [("monitors.temperature.threshold_celsius", 90, 80)]
    assert plan.needs_restart == ()
    assert plan.settings.monitors.temperature.threshold_celsius == 80


def test_unchanged_settings_change_nothing() -> None:
    plan = plan_reload(settings_with(), settings_with())
    assert (plan.applied, plan.needs_restart) == ((), ())
    assert plan.settings == settings_with()


def test_settings_needing_a_restart_are_named_never_shown_and_kept_as_they_run() -> None:
    current = settings_with()
    new = settings_with(
        broker={"url": f"amqp://hv-01:other-{SECRET}@mq2.example.net:5672/evacuator"},
        host={"name": "hv-01", "libvirt_uri": "qemu+tls://elsewhere/system", "migration_address": "10.0.0.1"},
        evacuation={"on_severe": "quarantine", "move_attempts": 5},
    )
    plan = plan_reload(current, new)
    assert plan.needs_restart == ("broker.url", "evacuation.move_attempts", "host.libvirt_uri")
    assert [c.field for c in plan.applied] == ["evacuation.on_severe"]
    assert plan.settings.broker == current.broker and plan.settings.host == current.host
    assert plan.settings.evacuation.move_attempts == 3 and plan.settings.evacuation.on_severe == "quarantine"
    assert SECRET not in repr(plan) and SECRET not in str(plan.applied)


def test_a_new_policy_that_does_not_fit_the_running_poll_interval_is_refused() -> None:
    # Valid on its own (its own poll interval is shorter), but the running daemon polls every 10 s, which
    # only a restart changes: a stale limit of 5 s would make every poll stale.
    new = settings_with(monitors={"poll_interval_seconds": 1, "stale_after_seconds": 5})
    with pytest.raises(ConfigError, match=r"monitors.*restart"):
        plan_reload(settings_with(), new)


@dataclass
class Parts:
    """The real parts a reload changes, over the fakes their own tests use."""

    world: World  # the service, its notifier and timers
    desk: Desk
    guard: CloudGuard
    holders: PolicyHolders


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    world = World(tmp_path / "journal.sqlite")
    world.service.start()
    desk = Desk()
    guard = gate(FakeGuardState(held={0, 1}), FakeGuardView(CLOUD), [])  # two of ten hosts evacuate
    detector = Detector(settings_with().monitors.to_policy())
    yield Parts(
        world=world,
        desk=desk,
        guard=guard,
        holders=PolicyHolders(detector=detector, service=world.service, desk=desk.desk, guard=guard),
    )
    world.service.stop()
    world.journal.close()
    world.ledger.close()


def test_the_detector_takes_the_new_thresholds_and_keeps_its_state(parts: Parts) -> None:
    detector = parts.holders.detector
    state = detector.state
    reloaded = settings_with(monitors={"temperature": {"threshold_celsius": 70}, "hold_down_seconds": 5})
    parts.holders.apply(reloaded)
    assert detector.policy == reloaded.monitors.to_policy()
    assert detector.state is state


def test_a_severe_host_is_only_quarantined_once_the_reloaded_policy_says_so(parts: Parts) -> None:
    parts.world.add_vm("web", "acme", None)
    parts.holders.apply(settings_with(evacuation={"on_severe": "quarantine"}))
    parts.world.service.on_verdict(verdict(Severity.SEVERE))
    assert parts.world.notifier.sent == [] and parts.world.timers.pending() == {}
    parts.holders.apply(settings_with(evacuation={"default_window_seconds": 120}))
    parts.world.service.on_verdict(verdict(Severity.SEVERE))
    assert parts.world.timers.pending() == {parts.world.uuids["web"]: T0 + timedelta(seconds=120)}


def test_a_manual_approval_set_by_a_reload_holds_the_next_evacuation(parts: Parts) -> None:
    parts.world.add_vm("web", "acme", 60)
    parts.holders.apply(settings_with(evacuation={"approval_severe": "manual"}))
    parts.world.service.on_verdict(verdict(Severity.SEVERE))
    assert parts.world.notifier.sent == [] and parts.world.service.awaiting_approval() is not None


def test_the_reply_desk_caps_windows_with_the_reloaded_maximum(parts: Parts) -> None:
    parts.holders.apply(settings_with(evacuation={"default_window_seconds": 60, "max_window_seconds": 1200}))
    parts.desk.reply(RegisterReply(vm_uuid=VM, window_seconds=86_400))
    assert parts.desk.store.stored == [(VM, 1200)]


def test_the_guards_count_with_the_reloaded_share(parts: Parts) -> None:
    def once() -> Callable[[], bool]:
        calls = iter([False, True])  # one look at the guards, then give up
        return lambda: next(calls)

    parts.guard.begin(failed=False)
    assert parts.guard.admit(once()) is False, "a quarter of ten hosts: two already evacuate"
    parts.holders.apply(settings_with(guards={"max_evacuating_share": 0.5}))
    assert parts.guard.admit(once()) is True


def test_a_bad_file_keeps_the_settings_in_force_and_says_why_without_its_values(
    parts: Parts, tmp_path: Path
) -> None:
    current = settings_with(monitors={"temperature": {"threshold_celsius": 90}})
    path = tmp_path / "evacuator.yaml"
    path.write_text(f"broker: {{url: amqp://u:{SECRET}@mq/v\nmonitors: [\n", encoding="utf-8")
    with capture_logs() as logs:
        kept = reload_settings(path, current, parts.holders)
    assert kept is current
    [refused] = [e for e in logs if e["event"] == "reload_refused"]
    assert refused["log_level"] == "error" and "not valid YAML" in refused["error"]
    assert SECRET not in repr(logs)
    assert parts.holders.detector.policy == settings_with().monitors.to_policy(), "nothing applied"


def test_a_good_file_is_applied_and_logged_with_what_changed(parts: Parts, tmp_path: Path) -> None:
    current = settings_with()
    data = yaml.safe_load(yaml.safe_dump(current.model_dump(mode="json")))
    data["broker"]["url"] = f"amqp://hv-01:{SECRET}@mq.example.net:5672/evacuator"
    data["monitors"]["temperature"]["threshold_celsius"] = 75
    data["data_channel"]["port"] = 17000
    path = tmp_path / "evacuator.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with capture_logs() as logs:
        now = reload_settings(path, current, parts.holders)
    assert now.monitors.temperature.threshold_celsius == 75 and now.data_channel.port == 16529
    [reloaded] = [e for e in logs if e["event"] == "settings_reloaded"]
    assert reloaded["applied"] == ["monitors.temperature.threshold_celsius"]
    assert reloaded["changes"] == {"monitors.temperature.threshold_celsius": {"old": 85.0, "new": 75.0}}
    [restart] = [e for e in logs if e["event"] == "settings_need_restart"]
    assert restart["fields"] == ["data_channel.port"] and restart["log_level"] == "warning"
    assert parts.holders.detector.policy.temperature.threshold_celsius == 75
