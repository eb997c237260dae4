"""The Botburrow Hub client (contract §1): one method per call of the table, on one shared httpx client.

Every agent-scoped method takes that agent's key first; system calls use the system key given at
construction. Failures become `HubError`s: 401/403 `HubAuthError` (never retried), a route the Hub
does not serve `HubEndpointMissing` (never retried: a capability that is absent), a resource's 404
`HubNotFound`, 429 waited out (`Retry-After`, capped) then `HubRateLimited`; connection errors,
timeouts, 502, 503 and 504 retried with jittered exponential backoff then `HubUnavailable`. A 500 (or
another 5xx) fails that request only, at once, with code `SERVER_ERROR`: Moltbook answers 500 to a
malformed id, and retrying it would only hammer the Hub and open the breaker (contract §1, departure).
A circuit breaker per Hub (`breaker.breaker_for`) fails calls at once while the Hub is down; what
opens it is `breaker`'s rule.

With a `budget` (`budget.RequestBudget`), every request first waits for the Hub's shared request budget
(at most `budget_wait_s`, else `HubRateLimited` with code `BUDGET_SPENT` and the delay); a 429's
`Retry-After` and a read's `X-RateLimit-Limit` are told to it, so every process honours them. A
`background` client (ingest) spends only what foreground clients leave.

Departure from "timeouts are retried": a write (post, comment, DM) whose request was sent but whose
answer never came is not re-sent, since the Hub may have done it; it raises `HubUnavailable` with
`code="OUTCOME_UNKNOWN"` and the caller's idempotency markers decide.

A 2xx answer that does not fit the call (not JSON, the wrong shape, a null where a value belongs, nested
too deep to decode) raises `HubBadResponse` naming the call: never retried, since the Hub would give
the same answer again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from botburrow import tracing
from botburrow.hub import decode, deepjson
from botburrow.hub.breaker import CircuitBreaker, FailureClass
from botburrow.hub.budget import RequestBudget
from botburrow.hub.errors import (
    HubAuthError,
    HubBadResponse,
    HubEndpointMissing,
    HubError,
    HubNotFound,
    HubRateLimited,
    HubUnavailable,
)
from botburrow.secrets import redact, remember
from schemas.events import ActivationMetrics
from schemas.hub import (
    AgentProfile,
    BudgetHealth,
    Comment,
    NotificationPage,
    Post,
    SearchResults,
)

# The client with its errors: callers catch what it raises without a second import.
__all__ = ["HubAuthError", "HubBadResponse", "HubClient", "HubEndpointMissing", "HubError", "HubNotFound",
           "HubRateLimited", "HubUnavailable"]

log = logging.getLogger(__name__)
E = TypeVar("E", bound=HubError)
T = TypeVar("T")

MAX_BACKOFF_S = 10.0
_encoder = msgspec.json.Encoder()
# Errors after which a request certainly did not reach the Hub's handler: safe to re-send any call.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Answers that say the Hub, not this request, is in trouble: retried, and counted by the breaker.
_HUB_DOWN: dict[int, FailureClass] = {502: "unreachable", 503: "overloaded", 504: "timeout"}


class _Retry(Exception):
    """One attempt failed in a way worth another attempt."""

    def __init__(self, error: HubError, delay_s: float | None = None, *, shared: bool = False) -> None:
        super().__init__(error.message)
        # shared: the budget already holds this delay (a 429's Retry-After): its wait replaces ours.
        self.error, self.delay_s, self.shared = error, delay_s, shared


MAX_CONNECTIONS = 100  # to one Hub, per process (httpx's default pool size)

class HubClient:
    def __init__(
        self,
        hub_url: str,
        *,
        system_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_attempts: int = 4,
        backoff_base_s: float = 0.2,
        timeout_s: float = 10.0,
        max_retry_after_s: float = 60.0,
        breaker: CircuitBreaker | None = None,
        budget: RequestBudget | None = None,
        background: bool = False,
        budget_wait_s: float = 30.0,
    ) -> None:
        # HUB_URL is the origin or the API itself (`.../api/v1`, as Moltbook's docs give it): both work.
        origin = hub_url.rstrip("/").removesuffix("/api/v1")
        self.base_url = origin + "/api/v1"
        self._system_key = system_key
        if system_key:
            remember("hub-api-key", system_key)
        self.max_attempts = max(1, max_attempts)
        self.backoff_base_s = backoff_base_s
        self.max_retry_after_s = max_retry_after_s
        self.breaker = breaker or CircuitBreaker()
        self.budget, self.background, self.budget_wait_s = budget, background, budget_wait_s
        self._limit_told: int | None = None  # the last X-RateLimit-Limit told to the budget
        self._reached = False
        self._http = httpx.AsyncClient(base_url=self.base_url, transport=transport, timeout=timeout_s,
                                       headers={"Accept": "application/json"},
                                       limits=httpx.Limits(max_connections=MAX_CONNECTIONS))
        # Requests past the pool's connections wait here, not in the pool: httpcore's pool costs CPU per
        # waiting request on every release (1,000 at once took 31 s on the event loop, gated 2.5 s: issue 18),
        # and its wait counted against `timeout_s` as a Hub timeout, opening the breaker for a local queue.
        self._gate = asyncio.Semaphore(MAX_CONNECTIONS)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    @property
    def has_system_key(self) -> bool:
        """Whether `/system/*` calls can be made at all (a Hub like Moltbook has no system key)."""
        return bool(self._system_key)

    @property
    def available(self) -> bool:
        """For readiness: the circuit is not open and the last attempt got an answer from the Hub."""
        return self._reached and self.breaker.state != "open"

    async def probe(self) -> bool:
        """One request without retries, to learn whether the Hub answers (any answer but 502/503/504). It
        spends the shared budget like a background call; with none left now, it is not sent (the Hub is
        not known to be down either: the last answer stands)."""
        if self.budget is not None:
            try:
                await self.budget.acquire("", background=True, max_wait_s=0.0)
            except HubRateLimited:
                return self._reached
        try:
            response = await self._http.get("/agents/me")
        except httpx.HTTPError:
            self._reached = False
            return False
        self._reached = response.status_code not in _HUB_DOWN
        return self._reached

    # --- agent-scoped calls ------------------------------------------------------------------

    async def unread_notifications(self, key: str, limit: int = 50) -> NotificationPage:
        return await self._call_as(decode.notification_page, "GET", "/notifications", key,
                                   params={"unread": "true", "limit": limit})

    async def mark_read(self, key: str, ids: list[str]) -> int:
        if not ids:
            return 0
        return await self._call_as(lambda body: decode.count(body, "marked", "count"), "POST",
                                   "/notifications/read", key, json={"notification_ids": list(ids)})

    async def list_posts(self, key: str, submolt: str | None, sort: str = "new", limit: int = 25,
                         offset: int = 0) -> list[Post]:
        """A page of posts of one community, or of all (`submolt` None)."""
        params: dict[str, Any] = {"sort": sort, "limit": limit, "offset": offset}
        if submolt is not None:
            params["submolt"] = decode.community(submolt)
        return await self._call_as(decode.posts, "GET", "/posts", key, params=params)

    async def get_post(self, key: str, post_id: str) -> Post:
        return await self._call_as(decode.post, "GET", f"/posts/{_segment(post_id)}", key)

    async def get_comments(self, key: str, post_id: str, sort: str = "new", limit: int = 100) -> list[Comment]:
        return await self._call_as(decode.comments, "GET", f"/posts/{_segment(post_id)}/comments", key,
                                   params={"sort": sort, "limit": limit})

    async def create_comment(self, key: str, post_id: str, content: str,
                             parent_id: str | None = None) -> Comment:
        payload: dict[str, Any] = {"content": content}
        if parent_id:
            payload["parent_id"] = parent_id
        return await self._call_as(decode.comment, "POST", f"/posts/{_segment(post_id)}/comments", key,
                                   json=payload, write=True)

    async def create_post(self, key: str, submolt: str, title: str, content: str) -> Post:
        payload = {"submolt": decode.community(submolt), "title": title, "content": content}
        return await self._call_as(decode.post, "POST", "/posts", key, json=payload, write=True)

    async def search(self, key: str, q: str, limit: int = 10) -> SearchResults:
        return await self._call_as(decode.search_results, "GET", "/search", key, params={"q": q, "limit": limit})

    async def me(self, key: str) -> AgentProfile:
        return await self._call_as(decode.profile, "GET", "/agents/me", key)

    async def send_dm(self, key: str, dm_id: str, content: str) -> dict[str, Any]:
        body = await self._call("POST", f"/agents/dm/conversations/{_segment(dm_id)}/send", key,
                                json={"content": content}, write=True)
        return body if isinstance(body, dict) else {"data": body}

    # --- system calls ------------------------------------------------------------------------

    async def budget_health(self) -> BudgetHealth:
        return await self._call_as(decode.budget_health, "GET", "/system/budget-health", self._need_system_key())

    async def report_consumption(self, events: list[ActivationMetrics]) -> int:
        if not events:
            return 0
        return await self._call_as(lambda body: decode.count(body, "accepted"), "POST", "/system/consumption",
                                   self._need_system_key(), content=_encoder.encode({"events": events}))

    def _need_system_key(self) -> str:
        if not self._system_key:
            # Only when a system call is made: a Hub without /system/* (Moltbook) needs no system key.
            raise HubAuthError(0, "this call needs the Hub system key, and none is set (secret hub-api-key "
                               "in SECRETS_DIR, or HUB_API_KEY)", "NO_SYSTEM_KEY")
        return self._system_key

    # --- transport ---------------------------------------------------------------------------

    async def _call_as(self, decoder: Callable[[Any], T], method: str, path: str, key: str, **options: Any) -> T:
        """`_call`, then `decoder` on the answer; an answer that does not fit is a `HubBadResponse` naming the call."""
        body = await self._call(method, path, key, **options)
        try:
            return decoder(body)
        except HubBadResponse as exc:
            raise HubBadResponse(redact(f"{method} {path}: {exc.message}"[:500]), exc.status, exc.code) from None
        except RecursionError:
            raise HubBadResponse(f"{method} {path}: answer nested too deep to decode", code="TOO_DEEP") from None

    async def _call(self, method: str, path: str, key: str, *, params: dict[str, Any] | None = None,
                    json: Any = None, content: bytes | None = None, write: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}  # no key: a probe of what the Hub serves
        tracing.with_current(headers)  # within an activation: its trace context (botburrow/tracing.py)
        if content is not None:
            headers["Content-Type"] = "application/json"
        last: HubError | None = None
        for attempt in range(1, self.max_attempts + 1):
            if not self.breaker.allow():
                raise HubUnavailable(0, f"{method} {path}: circuit open, Hub presumed down "
                                     f"({self.breaker.opened_by})", "CIRCUIT_OPEN")
            if self.budget is not None:
                await self._spend(key)
            try:
                return await self._attempt(method, path, key, headers, params, json, content, write)
            except _Retry as retry:
                last = retry.error
                if attempt == self.max_attempts:
                    break
                delay_s = retry.delay_s if retry.delay_s is not None else self._backoff_s(attempt)
                if retry.shared:
                    delay_s = 0.0  # the budget waits it out for every process (bounded by budget_wait_s)
                log.warning("hub call retried", extra={"method": method, "path": path, "attempt": attempt,
                                                       "status": retry.error.status, "delay_s": round(delay_s, 3)})
                await asyncio.sleep(delay_s)
        assert last is not None
        if isinstance(last, HubRateLimited):
            raise last
        raise HubUnavailable(last.status, f"{method} {path}: gave up after {self.max_attempts} attempts: "
                             f"{last.message}", last.code or "RETRIES_EXHAUSTED")

    async def _spend(self, key: str) -> None:
        """Wait for the shared budget; the breaker's half-open probe is handed back if it is spent."""
        assert self.budget is not None
        try:
            await self.budget.acquire(key, background=self.background, max_wait_s=self.budget_wait_s)
        except BaseException:
            self.breaker.release()
            raise

    async def _attempt(self, method: str, path: str, key: str, headers: dict[str, str],
                       params: dict[str, Any] | None, json: Any, content: bytes | None, write: bool) -> Any:
        try:
            async with self._gate:
                response = await self._http.request(method, path, headers=headers, params=params,
                                                    json=json, content=content)
        except httpx.HTTPError as exc:
            self._reached = False
            self.breaker.record_failure("timeout" if isinstance(exc, httpx.TimeoutException) else "unreachable")
            error = HubUnavailable(0, f"{method} {path}: {type(exc).__name__}", "UNREACHABLE")
            if write and not isinstance(exc, _NOT_SENT):
                raise HubUnavailable(0, f"{method} {path}: {type(exc).__name__} after the request was "
                                     "sent; not re-sent", "OUTCOME_UNKNOWN") from None
            raise _Retry(error) from None
        except BaseException:
            # Cancelled mid-call: no outcome, so a half-open circuit may let another probe through.
            self.breaker.release()
            raise
        await self._tell_budget(method, key, response)
        return self._handle(method, path, response)

    async def _tell_budget(self, method: str, key: str, response: httpx.Response) -> None:
        """A 429's Retry-After, and a read's X-RateLimit-Limit when it changed, to every process."""
        if self.budget is None:
            return
        retry_after_s = _retry_after_s(response) if self._shared_429(method, response) else None
        limit = _int_header(response, "X-RateLimit-Limit") if method == "GET" else None
        if limit == self._limit_told:
            limit = None
        if limit is not None or retry_after_s is not None:
            await self.budget.observe(key, limit=limit, retry_after_s=retry_after_s)
            self._limit_told = limit or self._limit_told

    def _shared_429(self, method: str, response: httpx.Response) -> bool:
        """Whether a 429 is the Hub's overall request limit, which every caller shares, rather than a limit
        on one key's writes (Moltbook: a post per 30 min, 50 comments an hour), which is that agent's
        alone: on a write, only when its X-RateLimit-Limit is the one the reads carry."""
        if self.budget is None or response.status_code != 429:
            return False
        if method == "GET":
            return True
        limit = _int_header(response, "X-RateLimit-Limit")
        return limit is not None and limit == self._limit_told

    def _handle(self, method: str, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        self._reached = status not in _HUB_DOWN
        if status in _HUB_DOWN:
            self.breaker.record_failure(_HUB_DOWN[status])
            raise _Retry(_error(HubUnavailable, method, path, response))
        self.breaker.record_success()  # the Hub answered: even a 500 is this request's failure, not the Hub's
        if status >= 500:
            failed = _error(HubUnavailable, method, path, response)
            raise HubUnavailable(status, failed.message, "SERVER_ERROR", failed.hint)
        if status == 429:
            error = _error(HubRateLimited, method, path, response)
            retry_after_s = _retry_after_s(response)
            error.retry_after_s = retry_after_s
            if retry_after_s is not None and retry_after_s > self.max_retry_after_s:
                raise error
            shared = retry_after_s is not None and self._shared_429(method, response)
            raise _Retry(error, delay_s=retry_after_s, shared=shared)
        if status in (401, 403):
            raise _error(HubAuthError, method, path, response)
        if _endpoint_missing(response):
            raise _error(HubEndpointMissing, method, path, response)
        if status == 404:
            raise _error(HubNotFound, method, path, response)
        if status >= 400:
            raise _error(HubError, method, path, response)
        body = _json(method, path, response)
        if isinstance(body, dict) and body.get("success") is False:
            raise _error(HubError, method, path, response)
        return body

    def _backoff_s(self, attempt: int) -> float:
        # Full exponential growth with +-50 % jitter, so that many clients do not retry in step.
        return min(MAX_BACKOFF_S, self.backoff_base_s * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.5)


def _segment(value: str) -> str:
    """An id as one path segment: a stray `/` or `?` must not change the route."""
    return quote(value, safe="")


def _json(method: str, path: str, response: httpx.Response) -> Any:
    if not response.content:
        return {}
    try:
        return msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        raise HubBadResponse(f"{method} {path}: answer is not JSON", response.status_code) from None
    except RecursionError:
        pass  # msgspec recurses per level: a reply chain ~500 deep is past the stack; decode it without
    try:
        return deepjson.loads(response.content)
    except deepjson.DeepJsonError as exc:
        raise HubBadResponse(f"{method} {path}: answer nested too deep to decode ({exc})", response.status_code,
                             "TOO_DEEP") from None


def _endpoint_missing(response: httpx.Response) -> bool:
    """A route the Hub does not serve: 405; a 404 that is not JSON (a framework's or a proxy's page); a
    404 whose envelope says "Endpoint not found" (Moltbook) or is a framework's bare `{"detail": "Not
    Found"}`. A resource's 404 names what is missing (`Post not found`, code NOT_FOUND)."""
    if response.status_code == 405:
        return True
    if response.status_code != 404:
        return False
    try:
        body = msgspec.json.decode(response.content) if response.content else None
    except (msgspec.DecodeError, RecursionError):
        return True
    if not isinstance(body, dict):
        return True
    said = body.get("error") if "error" in body else body.get("detail")
    return isinstance(said, str) and said.strip().lower() in ("endpoint not found", "not found")


def _int_header(response: httpx.Response, name: str) -> int | None:
    try:
        value = int(response.headers.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error(kind: type[E], method: str, path: str, response: httpx.Response) -> E:
    """The Hub's `{"success": false, "error", "code", "hint"}` or `{"detail"}`, as an exception."""
    try:
        body = msgspec.json.decode(response.content) if response.content else {}
    except (msgspec.DecodeError, RecursionError):
        body = {}
    message, code, hint = response.reason_phrase or "error", None, None
    if isinstance(body, dict):
        raw = body.get("error") or body.get("detail") or body.get("message")
        if isinstance(raw, dict):
            code = raw.get("code") if isinstance(raw.get("code"), str) else None
            raw = raw.get("message") or raw
        if raw:
            message = raw if isinstance(raw, str) else msgspec.json.encode(raw).decode()
        code = body.get("code") if isinstance(body.get("code"), str) else code
        hint = body.get("hint") if isinstance(body.get("hint"), str) else None
    return kind(response.status_code, redact(f"{method} {path}: {message[:500]}"), code,
                redact(hint) if hint else None)
