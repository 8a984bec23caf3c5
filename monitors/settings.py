"""The `monitors:` section of the service's YAML, validated by pydantic, and its detector policy."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from monitors.damping import DampingPolicy
from monitors.detector import DetectorPolicy
from monitors.memory_rule import MemoryRule
from monitors.temperature_rule import TemperatureRule


class _Strict(BaseModel):
    # hide_input_in_errors: a ValidationError's text never echoes what was given (a password, say).
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class TemperatureSettings(_Strict):
    """N of M samples at or over `threshold_celsius` → severe; clears at `clear_celsius` (5 °C below)."""

    threshold_celsius: float = Field(default=85.0, gt=-50.0, lt=200.0)
    consecutive_samples: int = Field(default=3, ge=1)
    window_samples: int | None = Field(default=None, ge=1)
    clear_celsius: float | None = None
    sensor_crit_sources: tuple[str, ...] = ("ipmi",)
    min_sensor_crit_celsius: float = 30.0
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


class MemorySettings(_Strict):
    """Rate windows over memory-error deltas (defaults: mcelog's 10 CE per DIMM per 24 h; any UE)."""

    ce_threshold: int = Field(default=10, ge=1)
    ce_window_seconds: float = Field(default=86_400.0, gt=0)
    ue_threshold: int = Field(default=1, ge=1)
    ue_window_seconds: float = Field(default=86_400.0, gt=0)

    def to_rule(self) -> MemoryRule:
        return MemoryRule(**self.model_dump())


class HwmonSourceSettings(_Strict):
    enabled: bool = True


class EdacSourceSettings(_Strict):
    enabled: bool = True


class RasdaemonSourceSettings(_Strict):
    enabled: bool = True
    db_path: Path = Path("/var/lib/rasdaemon/ras-mc_event.db")


class IpmiSourceSettings(_Strict):
    """The BMC over IPMI-over-LAN; the password comes from here, `password_file` (first line) or
    `password_env` (a variable, e.g. from systemd's EnvironmentFile=), and is never logged."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=623, ge=1, le=65535)
    username: str = "admin"
    password: SecretStr | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @model_validator(mode="after")
    def _one_password(self) -> Self:
        given = [self.password, self.password_file, self.password_env]
        if sum(v is not None for v in given) > 1:
            raise ValueError("give at most one of password, password_file, password_env")
        return self


class SourcesSettings(_Strict):
    hwmon: HwmonSourceSettings = HwmonSourceSettings()
    edac: EdacSourceSettings = EdacSourceSettings()
    rasdaemon: RasdaemonSourceSettings = RasdaemonSourceSettings()
    ipmi: IpmiSourceSettings = IpmiSourceSettings()

    def enabled_names(self) -> frozenset[str]:
        return frozenset(
            name
            for name, source in (
                ("hwmon", self.hwmon),
                ("edac", self.edac),
                ("rasdaemon", self.rasdaemon),
                ("ipmi", self.ipmi),
            )
            if source.enabled
        )


class MonitorsSettings(_Strict):
    """Everything under `monitors:` in evacuator.yaml."""

    sysfs_root: Path = Path("/sys")
    poll_interval_seconds: float = Field(default=10.0, gt=0)
    stale_after_seconds: float = Field(default=300.0, gt=0)
    hold_down_seconds: float = Field(default=900.0, ge=0)
    flap_max_per_hour: int | None = Field(default=3, ge=1)
    temperature: TemperatureSettings = TemperatureSettings()
    memory: MemorySettings = MemorySettings()
    sources: SourcesSettings = SourcesSettings()

    @model_validator(mode="after")
    def _check_timing(self) -> Self:
        if self.stale_after_seconds <= self.poll_interval_seconds:
            raise ValueError(
                f"stale_after_seconds ({self.stale_after_seconds}) must exceed poll_interval_seconds "
                f"({self.poll_interval_seconds}), or every late poll would read as stale"
            )
        return self

    def to_policy(self) -> DetectorPolicy:
        """The pure detector's policy for these settings."""
        return DetectorPolicy(
            temperature=self.temperature.to_rule(),
            memory=self.memory.to_rule(),
            damping=DampingPolicy(
                hold_down_seconds=self.hold_down_seconds, flap_max_per_hour=self.flap_max_per_hour
            ),
            stale_after_seconds=self.stale_after_seconds,
        )
