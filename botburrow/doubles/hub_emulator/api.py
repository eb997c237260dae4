"""The contract §1 table under `/api/v1`, behind faults, bearer auth and (when enabled) rate limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from botburrow.doubles.hub_emulator.guards import Fault, RequestRecord, client_ip
from botburrow.doubles.hub_emulator.state import Agent, HubFault
from schemas.events import ActivationMetrics

if TYPE_CHECKING:
    from botburrow.doubles.hub_emulator.emulator import HubEmulator

Caller = Agent | None  # None: the system key
Handler = Callable[[Request, Caller], Awaitable[Response]]
Scope = Literal["agent", "system"]
_encoder = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status_code=status, headers=headers, media_type="application/json")


def fault_response(fault: HubFault) -> Response:
    body: dict[str, Any] = {"success": False, "error": fault.error, "code": fault.code}
    if fault.hint:
        body["hint"] = fault.hint
    return json_response(body, fault.status, fault.headers)


def injected_response(fault: Fault) -> Response:
    status = fault.status or 500
    headers = {"Retry-After": str(int(fault.retry_after_s))} if status == 429 else None
    if fault.error_shape == "detail":
        return json_response({"detail": fault.message}, status, headers)
    return json_response({"success": False, "error": fault.message, "code": "INJECTED_FAULT",
                          "hint": "set by the emulator's fault injection"}, status, headers)


async def read_json(request: Request) -> dict[str, Any]:
    try:
        raw = await request.body()
    except ClientDisconnect:  # the caller died mid-request (a killed runner): nothing to answer
        raise HubFault(499, "client closed the request", "CLIENT_CLOSED") from None
    try:
        body = msgspec.json.decode(raw) if raw else {}
    except msgspec.DecodeError:
        raise HubFault(400, "body is not JSON", "BAD_REQUEST") from None
    if not isinstance(body, dict):
        raise HubFault(400, "body must be a JSON object", "BAD_REQUEST")
    return body


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def int_param(request: Request, name: str, default: int, low: int = 0, high: int = 1000) -> int:
    try:
        value = int(request.query_params.get(name, default))
    except ValueError:
        raise HubFault(400, f"{name} must be an integer", "VALIDATION_ERROR") from None
    return max(low, min(high, value))


def text_field(body: dict[str, Any], name: str, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise HubFault(400, f"{name} must be a string", "VALIDATION_ERROR")
    return value


class Api:
    def __init__(self, hub: HubEmulator) -> None:
        self.hub = hub

    def routes(self) -> list[Route]:
        def route(path: str, handler: Handler, method: str, scope: Scope = "agent") -> Route:
            return Route(path, self._guard(handler, scope), methods=[method])

        return [
            route("/notifications", self.notifications, "GET"),
            route("/notifications/read", self.mark_read, "POST"),
            route("/posts", self.list_posts, "GET"),
            route("/posts", self.create_post, "POST"),
            route("/posts/{post_id}", self.get_post, "GET"),
            route("/posts/{post_id}/comments", self.get_comments, "GET"),
            route("/posts/{post_id}/comments", self.create_comment, "POST"),
            route("/search", self.search, "GET"),
            route("/agents/me", self.me, "GET"),
            route("/agents/dm/conversations/{dm_id}/send", self.send_dm, "POST"),
            route("/system/budget-health", self.budget_health, "GET", "system"),
            route("/system/consumption", self.consumption, "POST", "system"),
        ]

    def site_routes(self) -> list[Route]:
        """Routes outside `/api/v1` and `/admin`: none (an unknown path is Starlette's plain 404)."""
        return []

    def _guard(self, handler: Handler, scope: Scope) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            record = RequestRecord(request.method, request.url.path, time.monotonic())
            self.hub.requests.records.append(record)
            try:
                fault = self.hub.faults.take(request.method, request.url.path)
                if fault and fault.latency_ms:
                    await asyncio.sleep(fault.latency_ms / 1000)
                if fault and fault.status:
                    response = injected_response(fault)
                else:
                    caller, record.caller, key = self._authenticate(request, scope)
                    if caller is not None:
                        who = client_ip(request) if self.hub.profile.requests_limited_per == "ip" else key
                        self.hub.limiter.check(who, "requests")
                        self.hub.limiter.hit(who, "requests")
                    response = await handler(request, caller)
            except HubFault as exc:
                response = fault_response(exc)
            record.status = response.status_code
            return response

        return endpoint

    def _authenticate(self, request: Request, scope: Scope) -> tuple[Caller, str | None, str]:
        key = bearer(request)
        if key is None:
            raise HubFault(401, "missing API key", "UNAUTHORIZED", "send Authorization: Bearer <key>")
        agent = self.hub.world.agent_of_key(key)
        if scope == "system":
            if key == self.hub.system_key:
                return None, "system", key
            if agent is not None:
                raise HubFault(403, "system calls need the system key", "FORBIDDEN")
            raise HubFault(401, "invalid API key", "UNAUTHORIZED")
        if agent is None:
            raise HubFault(401, "invalid API key", "UNAUTHORIZED", "check the agent's key")
        return agent, agent.name, key

    @staticmethod
    def _agent(caller: Caller) -> Agent:
        assert caller is not None  # agent scope guarantees it
        return caller

    # --- the table ----------------------------------------------------------------------------

    async def notifications(self, request: Request, caller: Caller) -> Response:
        name = self._agent(caller).name
        unread_only = request.query_params.get("unread", "false").lower() in ("true", "1", "yes")
        limit = int_param(request, "limit", 50, 1, 100)
        offset = int_param(request, "cursor", 0, 0, 1_000_000)
        every = self.hub.world.notifications.get(name, [])
        notes = [n for n in reversed(every) if not (unread_only and n.read)]
        page = notes[offset:offset + limit]
        body: dict[str, Any] = {"success": True, "notifications": page,
                                "unread_count": sum(1 for n in every if not n.read)}
        if len(notes) > offset + limit:
            body["next_cursor"] = str(offset + limit)
        return json_response(body)

    async def mark_read(self, request: Request, caller: Caller) -> Response:
        ids = (await read_json(request)).get("notification_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise HubFault(400, "notification_ids must be a list of strings", "VALIDATION_ERROR")
        return json_response({"success": True, "marked": self.hub.world.mark_read(self._agent(caller).name, ids)})

    async def list_posts(self, request: Request, caller: Caller) -> Response:
        limit, offset = int_param(request, "limit", 25, 1, 100), int_param(request, "offset", 0, 0, 1_000_000)
        found = self.hub.world.list_posts(request.query_params.get("submolt"),
                                          request.query_params.get("sort", "new"))
        page = found[offset:offset + limit]
        return json_response({"success": True, "posts": page, "pagination": {
            "count": len(page), "limit": limit, "offset": offset, "hasMore": len(found) > offset + limit}})

    async def get_post(self, request: Request, caller: Caller) -> Response:
        return json_response({"success": True, "post": self.hub.world.post(request.path_params["post_id"])})

    async def get_comments(self, request: Request, caller: Caller) -> Response:
        tree = self.hub.world.comment_tree(request.path_params["post_id"], request.query_params.get("sort", "new"),
                                           int_param(request, "limit", 100, 1, 1000))
        return json_response({"success": True, "comments": tree})

    async def create_comment(self, request: Request, caller: Caller) -> Response:
        agent, body = self._agent(caller), await read_json(request)
        key = bearer(request) or ""
        self.hub.limiter.check(key, "comments")
        parent_id = body.get("parent_id")
        if parent_id is not None and not isinstance(parent_id, str):
            raise HubFault(400, "parent_id must be a string", "VALIDATION_ERROR")
        comment = self.hub.world.add_comment(self.hub.world.author(agent.name), request.path_params["post_id"],
                                             text_field(body, "content"), parent_id or None)
        self.hub.limiter.hit(key, "comments")
        return json_response({"success": True, "comment": comment}, 201)

    async def create_post(self, request: Request, caller: Caller) -> Response:
        agent, body = self._agent(caller), await read_json(request)
        key = bearer(request) or ""
        self.hub.limiter.check(key, "posts")
        submolt = text_field(body, "submolt")
        if not submolt.strip():
            raise HubFault(400, "submolt is required", "VALIDATION_ERROR")
        post = self.hub.world.add_post(self.hub.world.author(agent.name), submolt, text_field(body, "title"),
                                       text_field(body, "content", required=False))
        self.hub.limiter.hit(key, "posts")
        return json_response({"success": True, "post": post}, 201)

    async def search(self, request: Request, caller: Caller) -> Response:
        q = request.query_params.get("q", "").strip()
        if not q:
            raise HubFault(400, "q is required", "VALIDATION_ERROR")
        found = self.hub.world.search(q, int_param(request, "limit", 10, 1, 100))
        return json_response({"success": True, **found})

    async def me(self, request: Request, caller: Caller) -> Response:
        return json_response({"success": True, "agent": self._agent(caller)})

    async def send_dm(self, request: Request, caller: Caller) -> Response:
        content = text_field(await read_json(request), "content")
        message = self.hub.world.send_dm(self._agent(caller).name, request.path_params["dm_id"], content)
        return json_response({"success": True, "message": message}, 201)

    async def budget_health(self, request: Request, caller: Caller) -> Response:
        return json_response({"success": True, **self.hub.world.budget_health()})

    async def consumption(self, request: Request, caller: Caller) -> Response:
        try:
            events = msgspec.convert((await read_json(request)).get("events"), list[ActivationMetrics])
        except msgspec.ValidationError as exc:
            raise HubFault(400, f"invalid events: {exc}", "VALIDATION_ERROR") from None
        new = self.hub.world.add_consumption(events)
        return json_response({"success": True, "accepted": len(events), "new": new})
