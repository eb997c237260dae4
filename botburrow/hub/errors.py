"""Errors of the Hub client (contract §1). Messages carry the call, the status and the Hub's own message:
never a header, never a key (the Hub's message is redacted by value all the same)."""

from __future__ import annotations


class HubError(Exception):
    """The Hub answered with an error, or could not be reached."""

    def __init__(self, status: int, message: str, code: str | None = None, hint: str | None = None) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.hint = hint
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"Hub {self.status}: {self.message}" if self.status else f"Hub: {self.message}"
        return f"{text} [{self.code}]" if self.code else text


class HubAuthError(HubError):
    """401/403: the key is unknown or not allowed. Never retried; fails only that agent's work."""


class HubNotFound(HubError):
    """404 for a resource (a post, a comment, an agent) on a route the Hub serves."""


class HubEndpointMissing(HubError):
    """The Hub does not serve this route at all: a 404 with its "Endpoint not found" envelope, or a
    404/405 that is not JSON (a proxy's or a framework's page). A capability that is absent, not a
    failure: never retried, never counted by the circuit breaker (see `capabilities`)."""

    def __init__(self, status: int, message: str, code: str | None = "ENDPOINT_NOT_FOUND",
                 hint: str | None = None) -> None:
        super().__init__(status, message, code or "ENDPOINT_NOT_FOUND", hint)


class HubRateLimited(HubError):
    """429 that the client did not wait out (attempts exhausted, or `Retry-After` beyond the cap), or a
    request budget that stays spent beyond the client's wait (code `BUDGET_SPENT`). `retry_after_s`
    says when to ask again."""

    def __init__(self, status: int, message: str, code: str | None = None, hint: str | None = None,
                 retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(status, message, code, hint)


class HubUnavailable(HubError):
    """The circuit is open, retries are exhausted, the outcome of a write is unknown, or the Hub
    answered 500 to this one request (code `SERVER_ERROR`: not retried, see `client`)."""


class HubBadResponse(HubError):
    """The Hub answered 2xx, but not with what the call expects: not JSON, the wrong shape, a null where a
    value belongs, or nested too deep to decode. Asking again gets the same answer, so it is never
    retried: the work that needed it fails once, with this reason."""

    def __init__(self, message: str, status: int = 200, code: str | None = "BAD_RESPONSE") -> None:
        super().__init__(status, message, code)
