"""The monitors package's exception tree: every error it raises derives from MonitorError."""


class MonitorError(Exception):
    """Base of every error raised by the monitors package."""


class SourceError(MonitorError):
    """One sensor source could not be read this poll; the message names the source and why."""


class NoWorkingSourceError(MonitorError):
    """Every configured source failed or is absent: the service would be blind, so it must not start."""


class TraceError(MonitorError):
    """A replay trace line is malformed; the message names the line number and the field."""
