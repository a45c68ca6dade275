"""What the client raises: one tree, so that `except ClientError` catches all of it.

    ClientError
    ├── ConfigurationError   the client's arguments are wrong (also a ValueError): raised by
    │                        the constructor, before anything is connected
    ├── ConnectionFailed     a broker cannot be reached, refused the login or the TLS
    │                        handshake, or dropped the connection
    ├── Timeout              no answer within the timeout (also a TimeoutError)
    └── Rejected             the service refused the command: `reason`, `message`, `errors`,
                             `retry_after`, `correlation_id`, `job_id` say why

The libraries' own exceptions (aiomqtt, aio-pika, ssl, OSError) are mapped at the edge with
`raise ... from exc`: the cause stays readable, the type is ours.
"""

from __future__ import annotations

from service.models import CommandRejected, FieldError, RejectionReason

__all__ = ["ClientError", "ConfigurationError", "ConnectionFailed", "Rejected", "Timeout"]


class ClientError(Exception):
    """Anything the client raises."""


class ConfigurationError(ClientError, ValueError):
    """The client cannot be made with these arguments; the message says which and why."""


class ConnectionFailed(ClientError):  # noqa: N818 - the names say what happened
    """A broker is unreachable, refused us, or went away."""


class Timeout(ClientError, TimeoutError):  # noqa: N818 - the names say what happened
    """The service did not answer in time (it may be down, or the command never arrived)."""


class Rejected(ClientError):  # noqa: N818 - the names say what happened
    """The service answered the command with a `commandRejected`."""

    def __init__(self, rejection: CommandRejected) -> None:
        super().__init__(f"{rejection.reason.value}: {rejection.message}")
        self.rejection = rejection

    @property
    def reason(self) -> RejectionReason:
        return self.rejection.reason

    @property
    def message(self) -> str:
        return self.rejection.message

    @property
    def errors(self) -> list[FieldError]:
        """The fields that failed the schema (`schema_violation`), else empty."""
        return list(self.rejection.errors or ())

    @property
    def retry_after(self) -> float | None:
        """`rate_limited`: seconds to wait before the key's next command is taken."""
        return self.rejection.retryAfter

    @property
    def correlation_id(self) -> str:
        return self.rejection.correlationId

    @property
    def job_id(self) -> str | None:
        return self.rejection.jobId
