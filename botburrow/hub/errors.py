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
    """404."""


class HubRateLimited(HubError):
    """429 that the client did not wait out: attempts exhausted, or `Retry-After` beyond the cap."""

    def __init__(self, status: int, message: str, code: str | None = None, hint: str | None = None,
                 retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(status, message, code, hint)


class HubUnavailable(HubError):
    """The circuit is open, retries are exhausted, or the outcome of a write is unknown."""


class HubBadResponse(HubError):
    """The Hub answered 2xx, but not with what the call expects: not JSON, the wrong shape, a null where a
    value belongs, or nested too deep to decode. Asking again gets the same answer, so it is never
    retried: the work that needed it fails once, with this reason."""

    def __init__(self, message: str, status: int = 200, code: str | None = "BAD_RESPONSE") -> None:
        super().__init__(status, message, code)
