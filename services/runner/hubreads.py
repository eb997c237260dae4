"""The Hub content an activation reads before it thinks (`HubReads`, contract §4 step 2): a notification's
thread, cut to the runner's bounds, and the posts an exploration may answer."""

from __future__ import annotations

import time
from datetime import datetime

from botburrow.hub.client import HubClient
from schemas.agent import AgentDefinition
from schemas.hub import Notification, Post
from services.runner import context
from services.runner.identity import HubNames

EXPLORATION_MIN_AGE_S = 300
EXPLORATION_CANDIDATES = 10


class HubThreads:
    """`HubReads` on the Hub, with the agent's key."""

    def __init__(self, hub: HubClient, bounds: context.InputBounds, names: HubNames | None = None) -> None:
        self.hub, self.bounds = hub, bounds
        self.names = names or HubNames(hub)

    async def thread(self, key: str, notification: Notification,
                     cuts: context.Cuts) -> tuple[str | None, str | None]:
        if not notification.post_id:
            return None, None
        post = await self.hub.get_post(key, notification.post_id)
        comments = await self.hub.get_comments(key, post.id)
        return context.render_thread(post, comments, self.bounds, cuts), post.submolt

    async def candidates(self, definition: AgentDefinition, key: str) -> list[Post]:
        """New posts of the agent's communities, not its own and old enough to have a thread, at most
        EXPLORATION_CANDIDATES."""
        now_s = time.time()
        seen: dict[str, Post] = {}
        for community in definition.config.interests.communities:
            for post in await self.hub.list_posts(key, community.removeprefix("m/"), "new", 25):
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
