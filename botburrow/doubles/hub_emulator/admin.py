"""The emulator's own admin API under `/admin` (system key required): seed the world, set faults,
rate limits and budgets, read the whole state, reset."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from botburrow.doubles.hub_emulator.api import bearer, fault_response, json_response, read_json, text_field
from botburrow.doubles.hub_emulator.guards import Fault
from botburrow.doubles.hub_emulator.state import HubFault
from schemas.hub import Author

if TYPE_CHECKING:
    from botburrow.doubles.hub_emulator.emulator import HubEmulator

Handler = Callable[[dict[str, Any]], Awaitable[Response]]


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise HubFault(400, f"{name} must be a string", "VALIDATION_ERROR")
    return value or None


def _number(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise HubFault(400, f"{name} must be a number", "VALIDATION_ERROR")
    return float(value)


class Admin:
    def __init__(self, hub: HubEmulator) -> None:
        self.hub = hub

    def routes(self) -> list[Route]:
        def route(path: str, handler: Handler, method: str = "POST") -> Route:
            return Route(path, self._guard(handler), methods=[method])

        return [
            route("/agents", self.create_agent),
            route("/posts", self.create_post),
            route("/comments", self.create_comment),
            route("/notifications", self.create_notification),
            route("/mention", self.mention),
            route("/dm", self.dm),
            route("/faults", self.set_fault),
            route("/faults", self.list_faults, "GET"),
            route("/faults", self.clear_faults, "DELETE"),
            route("/rate-limits", self.rate_limits),
            route("/hooks", self.hooks),
            route("/budget", self.budget),
            route("/state", self.state, "GET"),
            route("/reset", self.reset),
        ]

    def _guard(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                if bearer(request) != self.hub.system_key:
                    raise HubFault(401, "admin calls need the system key", "UNAUTHORIZED")
                body = await read_json(request) if request.method == "POST" else {}
                return await handler(body)
            except HubFault as exc:
                return fault_response(exc)

        return endpoint

    def _sender(self, body: dict[str, Any], default: str = "alice") -> Author:
        raw = body.get("from")
        if isinstance(raw, dict):
            return Author(id=str(raw.get("id", "")), name=str(raw.get("name", default)),
                          type=str(raw.get("type", "human")))
        return self.hub.world.author(raw if isinstance(raw, str) and raw else default)

    async def create_agent(self, body: dict[str, Any]) -> Response:
        name = text_field(body, "name")
        key = self.hub.add_agent(name, text_field(body, "type", required=False) or "native",
                                 _optional_str(body, "key"), text_field(body, "description", required=False))
        return json_response({"success": True, "agent": self.hub.world.agents[name], "api_key": key}, 201)

    async def create_post(self, body: dict[str, Any]) -> Response:
        post = self.hub.world.add_post(
            self.hub.world.author(_optional_str(body, "author") or "alice"),
            text_field(body, "submolt", required=False) or "general", text_field(body, "title"),
            text_field(body, "content", required=False), score=int(_number(body, "score", 0)),
            age_s=_number(body, "age_s", 0.0), notify=bool(body.get("notify", True)), url=_optional_str(body, "url"))
        made: dict[str, Any] = {"success": True, "post": post}
        if post.id in self.hub.world.links:
            made["url"] = self.hub.world.links[post.id]
        return json_response(made, 201)

    async def create_comment(self, body: dict[str, Any]) -> Response:
        comment = self.hub.world.add_comment(
            self.hub.world.author(_optional_str(body, "author") or "alice"), text_field(body, "post_id"),
            text_field(body, "content"), _optional_str(body, "parent_id"), score=int(_number(body, "score", 0)),
            notify=bool(body.get("notify", True)))
        return json_response({"success": True, "comment": comment}, 201)

    async def create_notification(self, body: dict[str, Any]) -> Response:
        note = self.hub.world.add_notification(
            text_field(body, "agent"), text_field(body, "type"), sender=self._sender(body),
            content=text_field(body, "content", required=False), post_id=_optional_str(body, "post_id"),
            comment_id=_optional_str(body, "comment_id"), dm_id=_optional_str(body, "dm_id"))
        return json_response({"success": True, "notification": note}, 201)

    async def mention(self, body: dict[str, Any]) -> Response:
        note = self.hub.mention(text_field(body, "agent"), text_field(body, "content"),
                                post_id=_optional_str(body, "post_id"), sender=self._sender(body))
        return json_response({"success": True, "notification": note, "post_id": note.post_id,
                              "comment_id": note.comment_id}, 201)

    async def dm(self, body: dict[str, Any]) -> Response:
        note = self.hub.dm(text_field(body, "agent"), text_field(body, "content"),
                           dm_id=_optional_str(body, "dm_id"), sender=self._sender(body))
        return json_response({"success": True, "notification": note, "dm_id": note.dm_id}, 201)

    async def set_fault(self, body: dict[str, Any]) -> Response:
        try:
            fault = msgspec.convert(body, Fault)
        except msgspec.ValidationError as exc:
            raise HubFault(400, f"invalid fault: {exc}", "VALIDATION_ERROR") from None
        self.hub.faults.add(fault)
        return json_response({"success": True, "faults": self.hub.faults.active}, 201)

    async def list_faults(self, body: dict[str, Any]) -> Response:
        return json_response({"success": True, "faults": self.hub.faults.active})

    async def clear_faults(self, body: dict[str, Any]) -> Response:
        self.hub.faults.clear()
        return json_response({"success": True, "faults": []})

    async def rate_limits(self, body: dict[str, Any]) -> Response:
        limits = body.get("limits") or {}
        if not isinstance(limits, dict):
            raise HubFault(400, "limits must be an object", "VALIDATION_ERROR")
        try:
            overrides = msgspec.convert(limits, dict[str, tuple[int, float]])
        except msgspec.ValidationError as exc:
            raise HubFault(400, f"invalid limits: {exc}", "VALIDATION_ERROR") from None
        self.hub.set_rate_limits(bool(body.get("enabled", True)), **overrides)
        return json_response({"success": True, "enabled": self.hub.limiter.enabled,
                              "limits": self.hub.limiter.limits})

    async def hooks(self, body: dict[str, Any]) -> Response:
        """`{"url": "<hook base>" | null, "secrets": {agent: secret} | null}`: inbox pings on or off; without
        `secrets`, each agent's is read from the emulator's SECRETS_DIR (`webhook-<agent>`)."""
        secrets = body.get("secrets")
        if secrets is not None and not (isinstance(secrets, dict)
                                        and all(isinstance(v, str) for v in secrets.values())):
            raise HubFault(400, "secrets must be an object of agent -> secret", "VALIDATION_ERROR")
        try:
            self.hub.configure_pings(_optional_str(body, "url"), secrets)
        except ValueError as exc:
            raise HubFault(400, str(exc), "VALIDATION_ERROR") from None
        return json_response({"success": True, "url": self.hub.pinger.hook_url if self.hub.pinger else None})

    async def budget(self, body: dict[str, Any]) -> Response:
        used_pct = body.get("used_pct")
        self.hub.set_budget(text_field(body, "tool_type"),
                            used_pct=None if used_pct is None else _number(body, "used_pct", 0.0),
                            limit_usd=_number(body, "limit_usd", 10.0))
        return json_response({"success": True, **self.hub.world.budget_health()})

    async def state(self, body: dict[str, Any]) -> Response:
        return json_response({"success": True, **self.hub.world.snapshot(), "faults": self.hub.faults.active,
                              "rate_limits": {"enabled": self.hub.limiter.enabled,
                                              "limits": self.hub.limiter.limits}})

    async def reset(self, body: dict[str, Any]) -> Response:
        self.hub.reset(keep_agents=bool(body.get("keep_agents", False)))
        return json_response({"success": True})
