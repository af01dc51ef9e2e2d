"""The one error tree of swarm-chatops, and how each branch reaches a user.

    ChatOpsError                 base: every error we raise on purpose
    ├── CommandError             the user typed something we cannot act on (usage shown)
    │   ├── UnknownCommand
    │   └── UnknownEnvironment
    ├── PermissionDenied         RBAC said no; names the role that is needed
    ├── NotFound                 a run, message or record that does not exist
    ├── Conflict                 the state moved on (lock held, duplicate, stale version)
    │   └── InvalidTransition    a state machine was asked for an illegal move
    ├── ConfigError              the YAML config or settings are invalid (list of problems)
    └── IntegrationError         an outside system failed (Slack, Kubernetes, Prometheus, ...)
        └── BackendUnavailable   could not reach it at all (connection, timeout, 5xx)

Front ends never show tracebacks: `user_message()` turns any exception into the text a
user sees, and unknown exceptions become a short message with an error id that is logged.
"""

from __future__ import annotations

import logging
import secrets

log = logging.getLogger(__name__)


class ChatOpsError(Exception):
    """Base of every error raised on purpose by swarm-chatops."""

    #: short machine-readable outcome written to the audit log
    outcome = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def user_text(self) -> str:
        text = f":warning: {self.message}"
        if self.hint:
            text += f"\n{self.hint}"
        return text


class CommandError(ChatOpsError):
    """The command line could not be understood; `usage` is shown with it."""

    outcome = "usage_error"

    def __init__(self, message: str, *, usage: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.usage = usage

    def user_text(self) -> str:
        text = f":warning: {self.message}"
        if self.usage:
            text += f"\nUsage: `{self.usage}`"
        if self.hint:
            text += f"\n{self.hint}"
        return text


class UnknownCommand(CommandError):
    """No command of that name exists."""


class UnknownEnvironment(CommandError):
    """The environment named is not in the config."""


class PermissionDenied(ChatOpsError):
    """The acting user lacks the role the action needs."""

    outcome = "denied"

    def __init__(self, message: str, *, role: str, environment: str | None) -> None:
        super().__init__(message)
        self.role = role
        self.environment = environment

    def user_text(self) -> str:
        where = f" in `{self.environment}`" if self.environment else ""
        return f":no_entry: {self.message}\nThis needs the *{self.role}* role{where}. Ask an admin to grant it."


class NotFound(ChatOpsError):
    outcome = "not_found"


class Conflict(ChatOpsError):
    outcome = "conflict"


class InvalidTransition(Conflict):
    """A state machine was asked to move from a state that does not allow it."""

    def __init__(self, kind: str, current: str, requested: str) -> None:
        super().__init__(f"{kind} cannot go from {current!r} to {requested!r}")
        self.kind = kind
        self.current = current
        self.requested = requested


class ConfigError(ChatOpsError):
    """Invalid configuration: `problems` holds one `path: message` line each."""

    outcome = "config_error"

    def __init__(self, problems: list[str], *, source: str = "config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source} is invalid: " + "; ".join(problems))


class IntegrationError(ChatOpsError):
    """An outside system answered with an error."""

    outcome = "backend_error"

    def __init__(self, system: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{system}: {message}", hint=hint)
        self.system = system


class BackendUnavailable(IntegrationError):
    """An outside system could not be reached (connection refused, timeout, 5xx)."""

    outcome = "backend_unavailable"


def new_error_id() -> str:
    return "E-" + secrets.token_hex(4)


def user_message(exc: BaseException) -> tuple[str, str]:
    """Return (text for the user, audit outcome). Unknown errors are logged with an id."""
    if isinstance(exc, ChatOpsError):
        return exc.user_text(), exc.outcome
    error_id = new_error_id()
    log.error("unexpected error %s", error_id, exc_info=exc)
    return (
        f":boom: Something went wrong on our side (error id `{error_id}`). "
        "Nothing further was done; the error is logged under that id.",
        "internal_error",
    )
