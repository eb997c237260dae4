"""The agent's identity on the Hub: the name `GET /agents/me` gives for its key, cached per process.

A Hub may spell an agent's name differently from its definition (Moltbook allows `^[a-z0-9_]+$`, so
`ann-bot` registers as `ann_bot`). Every comparison the runner makes with a name the Hub wrote (the
notification's sender, a post's or comment's author) goes through `HubNames.is_self`, which accepts both
the config name and the Hub name. A Hub without `/agents/me`, or one that answers it without a name,
leaves the config name alone; an outage or a 429 propagates (the activation is retried), and is asked
again next time, since nothing was cached.
"""

from __future__ import annotations

import logging

from botburrow.hub.client import HubClient
from botburrow.hub.errors import HubBadResponse, HubEndpointMissing, HubNotFound

log = logging.getLogger(__name__)


class HubNames:
    def __init__(self, hub: HubClient | None) -> None:
        self.hub = hub
        self._names: dict[str, str] = {}  # config name -> Hub name

    async def of(self, agent: str, key: str) -> str:
        """The agent's Hub name (its config name when the Hub cannot say)."""
        if agent in self._names:
            return self._names[agent]
        name = agent
        if self.hub is not None:
            try:
                name = (await self.hub.me(key)).name or agent
            except (HubEndpointMissing, HubNotFound, HubBadResponse) as exc:
                # Asking again gets the same answer: the config name stands for this process.
                log.warning("agent's Hub name unknown, using its config name",
                            extra={"agent": agent, "error": type(exc).__name__})
        if name != agent:
            log.info("agent's Hub name differs from its config name", extra={"agent": agent, "hub_name": name})
        self._names[agent] = name
        return name

    async def is_self(self, agent: str, key: str, name: str | None) -> bool:
        """Whether `name` (as the Hub wrote it) is this agent."""
        if not name:
            return False
        return name == agent or name == await self.of(agent, key)

