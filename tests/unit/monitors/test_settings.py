"""The `monitors:` settings: defaults, validation messages that name the field, and the detector policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from monitors.settings import MonitorsSettings


def test_defaults_read_the_real_sys() -> None:
    settings = MonitorsSettings()
    assert settings.sysfs_root == Path("/sys")
    assert settings.to_policy().temperature.consecutive_samples == 3


def test_yaml_shaped_mapping_becomes_a_policy() -> None:
    settings = MonitorsSettings.model_validate(
        {
            "sysfs_root": "/tmp/sys",
            "poll_interval_seconds": 5,
            "temperature": {"threshold_celsius": 80, "consecutive_samples": 4, "clear_celsius": 70},
        }
    )
    rule = settings.to_policy().temperature
    assert (rule.threshold_celsius, rule.consecutive_samples, rule.clear_celsius) == (80.0, 4, 70.0)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"temperature": {"consecutive_samples": 0}}, "consecutive_samples"),
        ({"temperature": {"threshold_celsius": 80, "clear_celsius": 80}}, "clear_celsius"),
        ({"temperature": {"treshold_celsius": 80}}, "treshold_celsius"),
        ({"poll_interval_seconds": 0}, "poll_interval_seconds"),
        ({"sysfs": "/sys"}, "sysfs"),
        ({"poll_interval_seconds": 60, "stale_after_seconds": 30}, "stale_after_seconds"),
        ({"memory": {"ce_threshold": 0}}, "ce_threshold"),
        ({"sources": {"ipmi": {"port": 70000}}}, "port"),
    ],
)
def test_invalid_settings_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        MonitorsSettings.model_validate(data)
    assert field in str(excinfo.value)
