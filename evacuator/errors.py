"""The evacuator package's exception tree: every error it raises derives from EvacuatorError."""


class EvacuatorError(Exception):
    """Base of every error raised by the evacuator package."""


class ConfigError(EvacuatorError):
    """The settings file is missing, unreadable or invalid; the message names the file and field."""


class TimerError(EvacuatorError):
    """The persistent timer store could not be opened or updated."""


class HypervisorError(EvacuatorError):
    """A hypervisor (libvirt) call failed; the message names the host, the operation and the VM or volume."""


class VmMetadataError(EvacuatorError):
    """A VM's evacuator metadata is malformed; the message names the field and what was expected."""


class MigrationError(EvacuatorError):
    """A VM move stopped before completing; the message names the VM and the step, `step` holds it."""

    def __init__(self, message: str, *, vm_uuid: str, step: str) -> None:
        super().__init__(message)
        self.vm_uuid = vm_uuid
        self.step = step


class LabError(EvacuatorError):
    """The test-and-demo lab (libvirt hosts, VMs) could not be set up; the message says what is amiss."""


class JournalError(EvacuatorError):
    """The move journal could not be read or written, or a move was asked to make an illegal transition."""
