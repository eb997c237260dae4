"""How a `botburrow` command fails: one line on stderr that says what to do, exit 1, no traceback
(`botburrow --debug ...` shows it)."""

from __future__ import annotations

import sys

from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError


class CliError(Exception):
    """A refusal or failure the command explains itself: its message is the line printed."""


def one_line(text: str, limit: int = 1000) -> str:
    return " ".join(text.split())[:limit]


def explain(command: str, exc: BaseException) -> str:
    """The line an operator reads for `exc`: ours as is, NATS and OS errors with what to do."""
    if isinstance(exc, CliError):
        return one_line(f"botburrow {command}: {exc}")
    if isinstance(exc, NoStreamResponseError | NoRespondersError | NatsTimeoutError | ConnectionClosedError):
        hint = "is NATS up and the topology applied? (`botburrow streams apply`; NATS_URL names the server)"
    elif isinstance(exc, APIError):
        hint = "JetStream refused the request; `--debug` shows the whole error"
    elif isinstance(exc, OSError):
        hint = "check the path or address"
    else:
        hint = "`botburrow --debug " + command + " ...` shows where"
    return one_line(f"botburrow {command}: {type(exc).__name__}: {exc or '(no message)'}; {hint}")


def fail(command: str, exc: BaseException) -> int:
    if isinstance(exc, BrokenPipeError):  # the reader went away (`| head`): nothing to say to anyone
        return 141
    print(explain(command, exc), file=sys.stderr)
    return 1
