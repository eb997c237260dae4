"""The `moltbook` profile's table under `/api/v1`: the routes the Moltbook API has, and none of ours.

Modelled on that API's source (routes/, services/, middleware/), not copied. In order, as its Express app
runs them: the overall rate limit (per client address), then the route, else "Endpoint not found"; then
the key (`moltbook_` and 64 hex), then the per-key post or comment limit (counted before the body is
even checked), then the handler. A malformed id reaches PostgreSQL and comes back as a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from botburrow.doubles.hub_emulator import moltbook_shapes as shape
from botburrow.doubles.hub_emulator.api import bearer, injected_response, json_response
from botburrow.doubles.hub_emulator.guards import RequestRecord, client_ip
from botburrow.doubles.hub_emulator.moltbook_rules import (
    MAX_DEPTH,
    METHODS,
    Call,
    Handler,
    bad_request,
    check_post,
    error_body,
    int_query,
    not_found,
    server_error,
    sort_posts,
    uuid_param,
)
from botburrow.doubles.hub_emulator.state import MAX_COMMENT_CHARS, Agent, HubFault, World, now_iso
from schemas.hub import Comment, Post

if TYPE_CHECKING:
    from botburrow.doubles.hub_emulator.emulator import HubEmulator

log = logging.getLogger(__name__)


class MoltbookApi:
    def __init__(self, hub: HubEmulator) -> None:
        self.hub = hub

    @property
    def world(self) -> World:
        return self.hub.world

    def routes(self) -> list[Route]:
        def route(path: str, handler: Handler, method: str, auth: bool = True) -> Route:
            return Route(path, self._guard(handler, auth), methods=[method])

        return [
            route("/health", self.health, "GET", auth=False),
            route("/agents/register", self.register, "POST", auth=False),
            route("/agents/me", self.me, "GET"),
            route("/agents/me", self.update_me, "PATCH"),
            route("/agents/status", self.status, "GET"),
            route("/agents/profile", self.profile, "GET"),
            route("/agents/{name}/follow", self.follow, "POST"),
            route("/agents/{name}/follow", self.unfollow, "DELETE"),
            route("/posts", self.list_posts, "GET"),
            route("/posts", self.create_post, "POST"),
            route("/posts/{id}", self.get_post, "GET"),
            route("/posts/{id}", self.delete_post, "DELETE"),
            route("/posts/{id}/upvote", self.vote(1, "post"), "POST"),
            route("/posts/{id}/downvote", self.vote(-1, "post"), "POST"),
            route("/posts/{id}/comments", self.get_comments, "GET"),
            route("/posts/{id}/comments", self.create_comment, "POST"),
            route("/comments/{id}", self.get_comment, "GET"),
            route("/comments/{id}", self.delete_comment, "DELETE"),
            route("/comments/{id}/upvote", self.vote(1, "comment"), "POST"),
            route("/comments/{id}/downvote", self.vote(-1, "comment"), "POST"),
            route("/submolts", self.list_submolts, "GET"),
            route("/submolts", self.create_submolt, "POST"),
            route("/submolts/{name}", self.get_submolt, "GET"),
            route("/submolts/{name}/feed", self.submolt_feed, "GET"),
            route("/submolts/{name}/subscribe", self.subscribe(True), "POST"),
            route("/submolts/{name}/subscribe", self.subscribe(False), "DELETE"),
            route("/feed", self.feed, "GET"),
            route("/search", self.search, "GET"),
            # Everything else, any method: Express's "Endpoint not found" (after the overall limit).
            Route("/{path:path}", self._guard(self.endpoint_not_found, False), methods=METHODS),
        ]

    def site_routes(self) -> list[Route]:
        """Outside `/api/v1`: Moltbook's root document, and its "Endpoint not found" (not rate-limited)."""
        async def root(request: Request) -> Response:
            return json_response({"name": "Moltbook API", "version": "1.0.0", "emulated": True})

        async def not_found(request: Request) -> Response:
            return json_response({"success": False, "error": "Endpoint not found", "hint": (
                f"{request.method} {request.url.path} does not exist. Check the API documentation.")}, 404)

        return [Route("/", root, methods=["GET"]), Route("/{path:path}", not_found, methods=METHODS)]

    # --- the pipeline every request goes through ----------------------------------------------

    def _guard(self, handler: Handler, auth: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            record = RequestRecord(request.method, request.url.path, time.monotonic())
            self.hub.requests.records.append(record)
            call = Call(request)
            try:
                response = await self._serve(call, handler, auth, record)
            except HubFault as exc:
                response = json_response(error_body(exc), exc.status, exc.headers)
            except Exception:  # Express's last handler: a bug or a driver error is a 500, never a hang
                log.exception("moltbook profile: %s %s failed", request.method, request.url.path)
                response = json_response(error_body(server_error()), 500)
            for name, value in call.headers.items():
                response.headers.setdefault(name, value)
            record.status = response.status_code
            return response

        return endpoint

    async def _serve(self, call: Call, handler: Handler, auth: bool, record: RequestRecord) -> Response:
        request = call.request
        fault = self.hub.faults.take(request.method, request.url.path)
        if fault and fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        if fault and fault.status:
            return injected_response(fault)
        per_ip = self.hub.profile.requests_limited_per == "ip"
        call.headers = self.hub.limiter.take(client_ip(request) if per_ip else (bearer(request) or ""), "requests")
        if auth:
            call.agent, call.key = self._authenticate(request)
            record.caller = call.agent.name
        return await handler(call)

    def _authenticate(self, request: Request) -> tuple[Agent, str]:
        header = request.headers.get("authorization", "")
        parts = header.split(" ")
        token = parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else ""
        if not token:
            raise HubFault(401, "No authorization token provided", "UNAUTHORIZED",
                           "Add 'Authorization: Bearer YOUR_API_KEY' header")
        if self.hub.profile.key_error(token):
            raise HubFault(401, "Invalid token format", "UNAUTHORIZED",
                           'Token should start with "moltbook_" followed by 64 hex characters')
        agent = self.world.agent_of_key(token)
        if agent is None:
            raise HubFault(401, "Invalid or expired token", "UNAUTHORIZED",
                           "Check your API key or register for a new one")
        return agent, token

    def _limit(self, call: Call, bucket: str, message: str) -> None:
        call.headers.update(self.hub.limiter.take(call.key, bucket, message))  # type: ignore[arg-type]

    async def _body(self, call: Call) -> dict[str, Any]:
        try:
            raw = await call.request.body()
        except ClientDisconnect:
            raise HubFault(499, "client closed the request", "CLIENT_CLOSED") from None
        try:
            body = msgspec.json.decode(raw) if raw.strip() else {}
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict):
            raise HubFault(400, "Invalid JSON body", None, "Check your request body is valid JSON")
        return body

    @staticmethod
    def _text(body: dict[str, Any], name: str) -> str | None:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise bad_request(f"{name} must be a string")
        return value

    async def endpoint_not_found(self, call: Call) -> Response:
        path = call.request.url.path.removeprefix("/api/v1") or "/"
        raise HubFault(404, "Endpoint not found", None,
                       f"{call.request.method} {path} does not exist. Check the API documentation.")

    async def health(self, call: Call) -> Response:
        return json_response({"success": True, "status": "healthy", "timestamp": now_iso()})

    # --- agents -------------------------------------------------------------------------------

    async def register(self, call: Call) -> Response:
        body = await self._body(call)
        raw = body.get("name")
        if not raw or not isinstance(raw, str):
            raise bad_request("Name is required")
        name = raw.strip().lower()
        if not 2 <= len(name) <= 32:
            raise bad_request("Name must be 2-32 characters")
        if self.hub.profile.name_error(name):
            raise bad_request("Name can only contain letters, numbers, and underscores")
        if name in self.world.agents:
            raise HubFault(409, "Name already taken", "CONFLICT", "Try a different name")
        key = self.world.add_agent(name, description=self._text(body, "description") or "")
        self.world.unclaimed.add(name)
        self.world.display_names[name] = raw.strip()
        claim = f"moltbook_claim_{uuid.uuid4().hex}"
        return json_response({"success": True, "agent": {
            "api_key": key, "claim_url": f"https://www.moltbook.com/claim/{claim}",
            "verification_code": f"reef-{uuid.uuid4().hex[:4].upper()}"},
            "important": "Save your API key! You will not see it again."}, 201)

    async def me(self, call: Call) -> Response:
        return json_response({"success": True, "agent": shape.agent_me(self.world, call.me)})

    async def update_me(self, call: Call) -> Response:
        body = await self._body(call)
        description, display_name = self._text(body, "description"), self._text(body, "displayName")
        if description is None and display_name is None:
            raise bad_request("No valid fields to update")
        agent = call.me
        if description is not None:
            agent = msgspec.structs.replace(agent, description=description)
            self.world.agents[agent.name] = agent
        if display_name is not None:
            self.world.display_names[agent.name] = display_name
        return json_response({"success": True, "agent": shape.agent_me(self.world, agent)})

    async def status(self, call: Call) -> Response:
        return json_response({"success": True,
                              "status": "pending_claim" if call.me.name in self.world.unclaimed else "claimed"})

    async def profile(self, call: Call) -> Response:
        agent = self.world.agents.get((call.request.query_params.get("name") or "").strip().lower())
        if agent is None:
            raise not_found("Agent")
        recent = [p for p in self.world.list_posts(None, "new") if p.author_name == agent.name][:10]
        return json_response({"success": True, "agent": shape.agent_profile(self.world, agent),
                              "isFollowing": (call.me.name, agent.name) in self.world.follows,
                              "recentPosts": [shape.search_post(self.world, p) for p in recent]})

    async def follow(self, call: Call) -> Response:
        target = self._agent_named(call)
        if target == call.me.name:
            raise bad_request("Cannot follow yourself")
        pair = (call.me.name, target)
        action = "already_following" if pair in self.world.follows else "followed"
        self.world.follows.add(pair)
        return json_response({"success": True, "action": action})

    async def unfollow(self, call: Call) -> Response:
        pair = (call.me.name, self._agent_named(call))
        action = "unfollowed" if pair in self.world.follows else "not_following"
        self.world.follows.discard(pair)
        return json_response({"success": True, "action": action})

    def _agent_named(self, call: Call) -> str:
        name = str(call.request.path_params["name"]).strip().lower()
        if name not in self.world.agents:
            raise not_found("Agent")
        return name

    # --- posts --------------------------------------------------------------------------------

    async def list_posts(self, call: Call) -> Response:
        return self._page(call, submolt=call.request.query_params.get("submolt"))

    async def submolt_feed(self, call: Call) -> Response:
        return self._page(call, submolt=call.request.path_params["name"])

    async def feed(self, call: Call) -> Response:
        me = call.me.name
        return self._page(call, keep=lambda p: (me, p.submolt) in self.world.subscriptions
                          or (me, p.author_name) in self.world.follows)

    def _page(self, call: Call, submolt: str | None = None, keep: Callable[[Any], bool] | None = None) -> Response:
        """Moltbook's `paginated`: `data` and `pagination`, whose `hasMore` says the page was full."""
        request = call.request
        limit, offset = int_query(request, "limit", 25), max(0, int_query(request, "offset", 0))
        posts = [p for p in self.world.posts.values()
                 if (not submolt or p.submolt == submolt.lower()) and (keep is None or keep(p))]
        posts = sort_posts(posts, request.query_params.get("sort", "hot"))
        page = posts[offset:offset + max(0, min(limit, 100))]
        return json_response({"success": True, "data": [shape.post_row(self.world, p) for p in page],
                              "pagination": {"count": len(page), "limit": limit, "offset": offset,
                                             "hasMore": len(page) == limit}})

    async def create_post(self, call: Call) -> Response:
        self._limit(call, "posts", "You can only post once every 30 minutes")
        body = await self._body(call)
        title, content, url = self._text(body, "title"), self._text(body, "content"), self._text(body, "url")
        submolt = (self._text(body, "submolt") or "").lower()
        check_post(title, content, url)
        assert title is not None
        if submolt not in self.world.submolts:
            raise not_found("Submolt")
        post = self.world.add_post(self.world.author(call.me.name), submolt, title.strip(), content or "", url=url)
        return json_response({"success": True, "post": shape.post_created(self.world, post)}, 201)

    async def get_post(self, call: Call) -> Response:
        post = self.world.posts.get(uuid_param(call.request.path_params["id"]))
        if post is None:
            raise not_found("Post")
        return json_response({"success": True, "post": shape.post_full(self.world, post, call.me.name)})

    async def delete_post(self, call: Call) -> Response:
        post_id = uuid_param(call.request.path_params["id"])
        post = self.world.posts.get(post_id)
        if post is None:
            raise not_found("Post")
        if post.author_name != call.me.name:
            raise HubFault(403, "You can only delete your own posts", "FORBIDDEN")
        del self.world.posts[post_id]
        for comment in self.world.comments.pop(post_id, []):
            self.world.comment_posts.pop(comment.id, None)
        return Response(status_code=204)

    # --- comments -----------------------------------------------------------------------------

    async def get_comments(self, call: Call) -> Response:
        # Moltbook does not look the post up here: an unknown post has no comments, not a 404.
        post_id = uuid_param(call.request.path_params["id"])
        limit = min(int_query(call.request, "limit", 100), 500)
        tree = shape.comment_tree(self.world, post_id, call.request.query_params.get("sort", "top"), max(0, limit))
        return json_response({"success": True, "comments": tree})

    async def create_comment(self, call: Call) -> Response:
        self._limit(call, "comments", "Too many comments, slow down")
        body = await self._body(call)
        content, parent_id = self._text(body, "content"), body.get("parent_id")
        if not content or not content.strip():
            raise bad_request("Content is required")
        if len(content) > MAX_COMMENT_CHARS:
            raise bad_request(f"Content must be {MAX_COMMENT_CHARS} characters or less")
        post_id = uuid_param(call.request.path_params["id"])
        if post_id not in self.world.posts:
            raise not_found("Post")
        if parent_id:
            parent = self._comment(uuid_param(parent_id))
            if parent is None or self.world.comment_posts.get(parent.id) != post_id:
                raise not_found("Parent comment")
            if parent.depth + 1 > MAX_DEPTH:
                raise bad_request("Maximum comment depth exceeded")
        comment = self.world.add_comment(self.world.author(call.me.name), post_id, content.strip(),
                                         parent_id or None)
        return json_response({"success": True, "comment": shape.comment_created(comment)}, 201)

    async def get_comment(self, call: Call) -> Response:
        comment_id = uuid_param(call.request.path_params["id"])
        comment = self._comment(comment_id)
        if comment is None:
            raise not_found("Comment")
        post_id = self.world.comment_posts[comment_id]
        return json_response({"success": True, "comment": shape.comment_full(self.world, post_id, comment)})

    async def delete_comment(self, call: Call) -> Response:
        comment = self._comment(uuid_param(call.request.path_params["id"]))
        if comment is None:
            raise not_found("Comment")
        if comment.author_name != call.me.name:
            raise HubFault(403, "You can only delete your own comments", "FORBIDDEN")
        self._replace_comment(msgspec.structs.replace(comment, content="[deleted]"))
        self.world.deleted_comments.add(comment.id)
        return Response(status_code=204)

    def _comment(self, comment_id: str) -> Comment | None:
        post_id = self.world.comment_posts.get(comment_id)
        flat = self.world.comments.get(post_id, []) if post_id else []
        return next((c for c in flat if c.id == comment_id), None)

    def _replace_comment(self, comment: Comment) -> None:
        flat = self.world.comments[self.world.comment_posts[comment.id]]
        flat[:] = [comment if c.id == comment.id else c for c in flat]

    def vote(self, value: int, kind: str) -> Handler:
        async def handler(call: Call) -> Response:
            target_id = uuid_param(call.request.path_params["id"])
            target = self.world.posts.get(target_id) if kind == "post" else self._comment(target_id)
            if target is None:
                raise not_found(kind.capitalize())
            if target.author_name == call.me.name:
                raise bad_request("Cannot vote on your own content")
            key = (call.me.name, target_id)
            previous = self.world.votes.pop(key, 0)
            action = "removed" if previous == value else ("changed" if previous else
                                                         "upvoted" if value > 0 else "downvoted")
            if action != "removed":
                self.world.votes[key] = value
            delta = -value if action == "removed" else (2 * value if action == "changed" else value)
            if isinstance(target, Post):
                self.world.posts[target_id] = msgspec.structs.replace(target, score=target.score + delta)
            else:
                self._replace_comment(msgspec.structs.replace(target, score=target.score + delta))
            message = {"upvoted": "Upvoted!", "downvoted": "Downvoted!", "removed": "Vote removed!"}
            return json_response({"success": True, "message": message.get(action, "Vote changed!"),
                                  "action": action, "author": {"name": target.author_name}})

        return handler

    # --- submolts and search ------------------------------------------------------------------

    async def list_submolts(self, call: Call) -> Response:
        limit, offset = int_query(call.request, "limit", 50), max(0, int_query(call.request, "offset", 0))
        rows = [shape.submolt_row(self.world, n) for n in self.world.submolts]
        rows.sort(key=lambda r: r["created_at"], reverse=True)
        rows.sort(key=lambda r: r["subscriber_count"], reverse=True)
        page = rows[offset:offset + max(0, min(limit, 100))]
        return json_response({"success": True, "data": page, "pagination": {
            "count": len(page), "limit": limit, "offset": offset, "hasMore": len(page) == limit}})

    async def create_submolt(self, call: Call) -> Response:
        body = await self._body(call)
        name = (self._text(body, "name") or "").strip().lower()
        if not name:
            raise bad_request("Name is required")
        if not 2 <= len(name) <= 24 or self.hub.profile.name_error(name):
            raise bad_request("Name must be 2-24 characters: lowercase letters, numbers, and underscores")
        if name in self.world.submolts:
            raise HubFault(409, "Submolt name already taken", "CONFLICT")
        self.world.add_submolt(name, self._text(body, "display_name") or name,
                               self._text(body, "description") or "")
        self.world.subscriptions.add((call.me.name, name))
        return json_response({"success": True, "submolt": shape.submolt_row(self.world, name)}, 201)

    async def get_submolt(self, call: Call) -> Response:
        name = str(call.request.path_params["name"]).lower()
        if name not in self.world.submolts:
            raise not_found("Submolt")
        return json_response({"success": True, "submolt": {
            **shape.submolt_row(self.world, name), "isSubscribed": (call.me.name, name) in self.world.subscriptions}})

    def subscribe(self, on: bool) -> Handler:
        async def handler(call: Call) -> Response:
            name = str(call.request.path_params["name"]).lower()
            if name not in self.world.submolts:
                raise not_found("Submolt")
            pair, was = (call.me.name, name), (call.me.name, name) in self.world.subscriptions
            (self.world.subscriptions.add if on else self.world.subscriptions.discard)(pair)
            action = ("already_subscribed" if was else "subscribed") if on else \
                ("unsubscribed" if was else "not_subscribed")
            return json_response({"success": True, "action": action})

        return handler

    async def search(self, call: Call) -> Response:
        q = (call.request.query_params.get("q") or "").strip()
        limit = min(int_query(call.request, "limit", 25), 100)
        if len(q) < 2:
            return json_response({"success": True, "posts": [], "agents": [], "submolts": []})
        needle = q.lower()
        posts = [p for p in self.world.posts.values()
                 if needle in p.title.lower() or (p.id not in self.world.links and needle in p.content.lower())]
        posts.sort(key=lambda p: p.created_at, reverse=True)
        posts.sort(key=lambda p: p.score, reverse=True)
        agents = [a for a in self.world.agents.values() if needle in a.name or needle in a.description.lower()
                  or needle in self.world.display_names.get(a.name, "").lower()]
        submolts = [s for s in self.world.submolts.values()
                    if needle in s.name or needle in s.display_name.lower() or needle in s.description.lower()]
        small = max(0, min(limit, 10))
        return json_response({"success": True,
                              "posts": [shape.search_post(self.world, p) for p in posts[:max(0, limit)]],
                              "agents": [shape.search_agent(self.world, a) for a in agents[:small]],
                              "submolts": [shape.submolt_row(self.world, s.name) for s in submolts[:small]]})


