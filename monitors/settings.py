"""The `monitors:` section of the service's YAML, validated by pydantic, and its detector policy."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from monitors.detector import DetectorPolicy
from monitors.temperature_rule import TemperatureRule


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TemperatureSettings(_Strict):
    """Temperature rule: N of M samples at or over `threshold_celsius` → severe; clears at `clear_celsius`."""

    threshold_celsius: float = Field(default=85.0, gt=-50.0, lt=200.0)
    consecutive_samples: int = Field(default=3, ge=1)
    window_samples: int | None = Field(default=None, ge=1)
    clear_celsius: float | None = None
    use_sensor_crit: bool = False
    failed_celsius: float | None = None

    @model_validator(mode="after")
    def _check_thresholds(self) -> Self:
        if self.clear_celsius is not None and self.clear_celsius >= self.threshold_celsius:
            raise ValueError(
                f"clear_celsius ({self.clear_celsius}) must be below threshold_celsius "
                f"({self.threshold_celsius})"
            )
        if self.window_samples is not None and self.window_samples < self.consecutive_samples:
            raise ValueError(
                f"window_samples ({self.window_samples}) must be at least consecutive_samples "
                f"({self.consecutive_samples})"
            )
        if self.failed_celsius is not None and self.failed_celsius <= self.threshold_celsius:
            raise ValueError("failed_celsius must be above threshold_celsius")
        return self

    def to_rule(self) -> TemperatureRule:
        return TemperatureRule(**self.model_dump())


class MonitorsSettings(_Strict):
    """Everything under `monitors:` in evacuator.yaml."""

    sysfs_root: Path = Path("/sys")
    poll_interval_seconds: float = Field(default=10.0, gt=0)
    stale_after_seconds: float = Field(default=300.0, gt=0)
    temperature: TemperatureSettings = TemperatureSettings()

    def to_policy(self) -> DetectorPolicy:
        """The pure detector's policy for these settings."""
        return DetectorPolicy(
            temperature=self.temperature.to_rule(), stale_after_seconds=self.stale_after_seconds
        )
