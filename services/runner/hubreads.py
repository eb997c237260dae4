"""The Hub content an activation reads before it thinks (`HubReads`, contract §4 step 2): a notification's
thread, cut to the runner's bounds, and the posts an exploration may answer.

Reads one activation needs are issued together (`all_of`): a thread's post and its comments, every
notification's thread, every community's new posts. Each is a round trip to the Hub; one after the other
they added up to most of the runner's own time per activation (issue 18)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import TypeVar

from botburrow.hub.client import HubClient
from schemas.agent import AgentDefinition
from schemas.hub import Notification, Post
from services.runner import context
from services.runner.identity import HubNames

EXPLORATION_MIN_AGE_S = 300
EXPLORATION_CANDIDATES = 10
T = TypeVar("T")


async def all_of(*calls: Awaitable[T]) -> list[T]:
    """Every call's result, in order, the calls run at once. Each runs to its end (none is cancelled
    half-way, a write may be among them); then the first error, if any, is raised as itself (not in a
    group: the activation maps each Hub error to its ending)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]  # no exception is left in it


class HubThreads:
    """`HubReads` on the Hub, with the agent's key."""

    def __init__(self, hub: HubClient, bounds: context.InputBounds, names: HubNames | None = None) -> None:
        self.hub, self.bounds = hub, bounds
        self.names = names or HubNames(hub)

    async def thread(self, key: str, notification: Notification,
                     cuts: context.Cuts) -> tuple[str | None, str | None]:
        if not notification.post_id:
            return None, None
        post, comments = await all_of(self.hub.get_post(key, notification.post_id),
                                      self.hub.get_comments(key, notification.post_id))
        assert isinstance(post, Post) and isinstance(comments, list)
        return context.render_thread(post, comments, self.bounds, cuts), post.submolt

    async def candidates(self, definition: AgentDefinition, key: str) -> list[Post]:
        """New posts of the agent's communities, not its own and old enough to have a thread, at most
        EXPLORATION_CANDIDATES."""
        now_s = time.time()
        seen: dict[str, Post] = {}
        communities = definition.config.interests.communities
        listed = await all_of(*(self.hub.list_posts(key, c.removeprefix("m/"), "new", 25) for c in communities))
        for posts in listed:
            for post in posts:
                if post.id in seen or await self.names.is_self(definition.name, key, post.author_name):
                    continue
                if _age_s(post.created_at, now_s) < EXPLORATION_MIN_AGE_S:
                    continue
                seen[post.id] = post
        return list(seen.values())[:EXPLORATION_CANDIDATES]


def _age_s(created_at: str, now_s: float) -> float:
    try:
        return now_s - datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")
