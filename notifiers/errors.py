"""The notifier package's exception tree: every error it raises derives from NotifierError.

NotifierError
├── InvalidName          a tenant or host name that cannot be one word of a routing key
├── RejectedReply        a reply the service refuses (missing user_id, wrong routing key, ...)
│   └── MalformedReply   ... because its body is not a valid reply
├── MalformedNotice      a notice body the tenant client cannot read
├── PublishError         a notice the broker did not take
│   ├── UnroutableNotice no queue is bound for the tenant (mandatory publish returned)
│   └── NoticeNacked     the broker refused responsibility for the message
├── BrokerUnavailable    cannot connect, or the connection broke mid-operation
├── NotifierClosed       the publisher or consumer was used after close()
├── BrokerRefused        the broker closed the channel on a tenant (403 access refused, 406 forged user_id)
├── ProvisioningError    a rabbitmqctl command failed
├── ProvisioningRefused  a user that is not a tenant made by `tenant add` (or a reserved name)
└── OutboxError          the notice outbox (SQLite) could not be opened, read or written
"""

from __future__ import annotations


class NotifierError(Exception):
    """Base of every error raised by the notifiers package."""


class InvalidName(NotifierError):
    """A tenant or host name that cannot be used as one word of a routing key."""


class RejectedReply(NotifierError):
    """A reply delivery the service refuses; `reason` says why in a few words, `code` is a stable word."""

    def __init__(self, reason: str, *, code: str = "refused_reply") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class MalformedReply(RejectedReply):
    """A reply whose body is not valid JSON for a known reply type and schema version."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, code="malformed_reply")


class MalformedNotice(NotifierError):
    """A notice body the tenant client cannot read; `reason` says what was expected."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownNoticeType(MalformedNotice):
    """A schema 1 notice of a type this version does not know: a newer service's; a client ignores it."""


class PublishError(NotifierError):
    """The broker did not take responsibility for a notice."""


class UnroutableNotice(PublishError):
    """The broker returned a mandatory notice: no queue is bound for that tenant."""


class NoticeNacked(PublishError):
    """The broker nacked a notice (it could not store it)."""


class BrokerUnavailable(NotifierError):
    """The broker could not be reached, or the connection broke during an operation."""


class NotifierClosed(NotifierError):
    """A publisher or consumer was used after close(), or before start()."""


class BrokerRefused(NotifierError):
    """The broker refused a tenant's operation; `reply_code` is AMQP's (403, 404, 406, ...)."""

    def __init__(self, operation: str, reply_code: int, reply_text: str) -> None:
        super().__init__(f"broker refused to {operation}: {reply_code} {reply_text}")
        self.operation = operation
        self.reply_code = reply_code
        self.reply_text = reply_text


class ProvisioningError(NotifierError):
    """A rabbitmqctl command failed; the message names the command (never the password)."""

    def __init__(self, command: str, returncode: int, output: str) -> None:
        super().__init__(f"`{command}` failed with exit code {returncode}: {output.strip()}")
        self.command = command
        self.returncode = returncode
        self.output = output


class ProvisioningRefused(NotifierError):
    """A tenant may not be made or removed under this name: its broker user is somebody else's (an
    administrator, the service's or a host's user); the message names the user and its tags."""


class OutboxError(NotifierError):
    """The notice outbox could not be opened, read or written; the message names the file."""
