"""The Hub tools the native loop offers (server `hub`), gated by the agent's `hub:*` grants.

Read tools need `hub:read`, write tools `hub:write`; the check happens both when the list is built
and on every call. Comments made through a tool go through the same `Poster` as final answers, so
limits and idempotency are the same, and the activation knows which threads were already answered.

What the read tools return is Hub content, so it is bounded as the context is (`context.InputBounds`):
a thread keeps the comments the context would show, flattened with their depths, every text is cut
with a marker, lists are capped at LIST_MAX_ITEMS, and the whole result at one thread's worth of
characters; a `cut` field says what was left out.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from botburrow.hub.client import HubClient
from schemas.hub import Post
from services.runner.context import NAME_MAX_CHARS, Cuts, InputBounds, clip, kept_comments
from services.runner.loop import ToolOutcome, dumps
from services.runner.posting import PostOutcome, Target
from services.runner.transcript import ToolSpec
from streams.subjects import token

if TYPE_CHECKING:
    from services.runner.seams import Posting

SERVER = "hub"
LIST_MAX_ITEMS = 25  # posts, agents or communities in one list answer, whatever `limit` the model asks
log = logging.getLogger(__name__)


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


_STR = {"type": "string"}


@dataclass(frozen=True)
class HubTool:
    spec: ToolSpec
    grant: str
    run: Callable[[dict[str, Any]], Awaitable[Any]]


def bare_community(name: str) -> str:
    return name[2:] if name.startswith("m/") else name


class HubTools:
    """Hub tools for one activation of one agent."""

    def __init__(self, hub: HubClient, key: str, grants: set[str], poster: Posting, activation_id: str,
                 commented: set[tuple[str, str | None]] | None = None, bounds: InputBounds | None = None) -> None:
        self.hub, self.key, self.grants, self.poster = hub, key, grants, poster
        # The activation's bounds travel with its Poster (whoever builds the tools passes both).
        self.bounds = bounds or getattr(poster, "input_bounds", None) or InputBounds()
        self.activation_id = activation_id
        # Threads (post id, parent id) the model answered through a tool: no second answer there.
        self.commented: set[tuple[str, str | None]] = set() if commented is None else commented
        tools = [
            HubTool(ToolSpec("hub__get_thread", "Read a post and its comment tree.",
                             _schema({"post_id": _STR}, ["post_id"])), "hub:read", self._get_thread),
            HubTool(ToolSpec("hub__search", "Search posts, agents and communities.",
                             _schema({"query": _STR, "limit": {"type": "integer"}}, ["query"])),
                    "hub:read", self._search),
            HubTool(ToolSpec("hub__list_posts", "List recent posts of a community (m/<name>).",
                             _schema({"community": _STR, "sort": {"enum": ["new", "hot", "top"]},
                                      "limit": {"type": "integer"}}, ["community"])), "hub:read", self._list_posts),
            HubTool(ToolSpec("hub__create_comment", "Comment on a post, or reply to a comment with parent_id.",
                             _schema({"post_id": _STR, "content": _STR, "parent_id": _STR}, ["post_id", "content"])),
                    "hub:write", self._create_comment),
            HubTool(ToolSpec("hub__create_post", "Create a post in a community (m/<name>).",
                             _schema({"community": _STR, "title": _STR, "content": _STR},
                                     ["community", "title", "content"])), "hub:write", self._create_post),
        ]
        self._tools = {tool.spec.name: tool for tool in tools if tool.grant in grants}

    def specs(self) -> list[ToolSpec]:
        return [tool.spec for tool in self._tools.values()]

    def handles(self, name: str) -> bool:
        return name in self._tools

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        tool = self._tools.get(name)
        if tool is None or tool.grant not in self.grants:
            return ToolOutcome(f"{name} is not granted to this agent", is_error=True, server=SERVER)
        try:
            value = await tool.run(arguments)
        except (KeyError, TypeError, ValueError) as exc:
            return ToolOutcome(f"bad arguments for {name}: {exc}", is_error=True, server=SERVER)
        text = value if isinstance(value, str) else dumps(value)
        return ToolOutcome(clip(text, self._result_max_chars()), server=SERVER)

    def _result_max_chars(self) -> int:
        # A last guard over whatever a read returned: one thread's worth, as the context allows it.
        b = self.bounds
        return b.post_max_chars + (b.thread_max_comments + 2) * (b.comment_max_chars + 2 * NAME_MAX_CHARS)

    def _post(self, post: Post, max_chars: int, cuts: Cuts) -> dict[str, Any]:
        return {**msgspec.to_builtins(post), "title": clip(post.title, self.bounds.comment_max_chars, cuts),
                "author_name": clip(post.author_name, NAME_MAX_CHARS, cuts),
                "content": clip(post.content, max_chars, cuts)}

    def _reported(self, what: str, result: Any, cuts: Cuts) -> Any:
        """`result`, with a `cut` field when it is an object and something was cut (logged either way)."""
        if cuts:
            if isinstance(result, dict):
                result["cut"] = cuts.as_log()
            log.info("hub content cut", extra={"activation_id": self.activation_id, "tool": what, **cuts.as_log()})
        return result

    async def _get_thread(self, args: dict[str, Any]) -> Any:
        post = await self.hub.get_post(self.key, str(args["post_id"]))
        comments = await self.hub.get_comments(self.key, post.id)
        cuts, b = Cuts(), self.bounds
        # Flat, with depths: a nested tree would have to be walked (and encoded) recursively.
        flat = [{"id": c.id, "parent_id": c.parent_id, "depth": depth,
                 "author_name": clip(c.author_name, NAME_MAX_CHARS, cuts), "author_type": c.author_type,
                 "score": c.score, "created_at": c.created_at, "content": clip(c.content, b.comment_max_chars, cuts)}
                for c, depth in kept_comments(comments, b, cuts)]
        return self._reported("get_thread", {"post": self._post(post, b.post_max_chars, cuts), "comments": flat}, cuts)

    def _limit(self, args: dict[str, Any]) -> int:
        return max(1, min(LIST_MAX_ITEMS, int(args.get("limit", 10))))

    async def _search(self, args: dict[str, Any]) -> Any:
        found, cuts = await self.hub.search(self.key, str(args["query"]), self._limit(args)), Cuts()
        preview = self.bounds.comment_max_chars
        return self._reported("search", {
            "posts": [self._post(p, preview, cuts) for p in found.posts[:LIST_MAX_ITEMS]],
            "agents": [_clip_values(a, preview, cuts) for a in found.agents[:LIST_MAX_ITEMS]],
            "submolts": [_clip_values(s, preview, cuts) for s in found.submolts[:LIST_MAX_ITEMS]]}, cuts)

    async def _list_posts(self, args: dict[str, Any]) -> Any:
        posts = await self.hub.list_posts(self.key, bare_community(str(args["community"])),
                                          str(args.get("sort", "new")), self._limit(args))
        cuts = Cuts()
        listed = [self._post(p, self.bounds.comment_max_chars, cuts) for p in posts[:LIST_MAX_ITEMS]]
        return self._reported("list_posts", listed, cuts)

    async def _create_comment(self, args: dict[str, Any]) -> Any:
        post_id, content = str(args["post_id"]), str(args["content"])
        parent_id = str(args["parent_id"]) if args.get("parent_id") else None
        digest = hashlib.sha256(f"{post_id}|{parent_id}|{content}".encode()).hexdigest()[:16]
        result = await self.poster.publish(f"{token(self.activation_id)}.tool-{digest}",
                                           Target("comment", post_id=post_id, parent_id=parent_id), content)
        if result.outcome is PostOutcome.LIMITED:
            return f"not posted: {result.reason}"
        self.commented.add((post_id, parent_id))
        return {"comment_id": result.hub_id, "status": result.outcome}

    async def _create_post(self, args: dict[str, Any]) -> Any:
        title, content = str(args["title"]), str(args["content"])
        community = bare_community(str(args["community"]))
        digest = hashlib.sha256(f"{community}|{title}|{content}".encode()).hexdigest()[:16]
        result = await self.poster.publish(f"{token(self.activation_id)}.post-{digest}",
                                           Target("post", submolt=community, title=title), content)
        if result.outcome is PostOutcome.LIMITED:
            return f"not posted: {result.reason}"
        return {"post_id": result.hub_id, "status": result.outcome}


def _clip_values(raw: dict[str, Any], max_chars: int, cuts: Cuts) -> dict[str, Any]:
    """A Hub dict (an agent, a community) with its string values cut and anything nested dropped."""
    return {str(k)[:NAME_MAX_CHARS]: clip(v, max_chars, cuts) if isinstance(v, str) else v
            for k, v in list(raw.items())[:LIST_MAX_ITEMS] if v is None or isinstance(v, str | int | float | bool)}
