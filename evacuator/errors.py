"""The evacuator package's exception tree: every error it raises derives from EvacuatorError."""


class EvacuatorError(Exception):
    """Base of every error raised by the evacuator package."""


class ConfigError(EvacuatorError):
    """The settings file is missing, unreadable or invalid; the message names the file and field."""


class TimerError(EvacuatorError):
    """The persistent timer store could not be opened or updated."""
