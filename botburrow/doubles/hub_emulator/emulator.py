"""`HubEmulator`: the emulated Hub as a real HTTP server, plus in-process helpers for tests and seeding."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from botburrow.doubles.hub_emulator.admin import Admin
from botburrow.doubles.hub_emulator.api import Api
from botburrow.doubles.hub_emulator.guards import MOLTBOOK_LIMITS, Bucket, Fault, Faults, RateLimiter, RequestLog
from botburrow.doubles.hub_emulator.moltbook import MoltbookApi
from botburrow.doubles.hub_emulator.pings import InboxPinger, SecretSource
from botburrow.doubles.hub_emulator.profiles import Profile, profile_named
from botburrow.doubles.hub_emulator.state import DirectMessage, HubFault, ToolBudgetConfig, World, new_id
from botburrow.runtime.http import RunningServer, serve
from schemas.events import ActivationMetrics
from schemas.hub import Author, Comment, Notification, Post

DEFAULT_SYSTEM_KEY = "hub-emulator-system-key"
DEFAULT_HUMAN = "alice"


class HubEmulator:
    """The emulated Hub. `profile`: "botburrow" (contract §1, the default) or "moltbook" (profiles.py).
    `rate_limits` None: the profile's default (on for moltbook); `limits` overrides buckets, e.g.
    `{"requests": (5, 60.0)}`. `hook_url` and `webhook_secrets` turn on signed inbox pings (pings.py)."""

    def __init__(self, system_key: str = DEFAULT_SYSTEM_KEY, rate_limits: bool | None = None, *,
                 auto_notify: bool = True, seed: int | None = None, profile: str | Profile = "botburrow",
                 limits: Mapping[Bucket, tuple[int, float]] | None = None, hook_url: str | None = None,
                 webhook_secrets: SecretSource | None = None) -> None:
        self.system_key = system_key
        self.profile = profile if isinstance(profile, Profile) else profile_named(profile)
        self.pinger: InboxPinger | None = None
        self._retired_pingers: list[InboxPinger] = []  # replaced at run time; closed on stop
        self.world = self._new_world(auto_notify)
        self.faults = Faults(random.Random(seed))
        self.limiter = RateLimiter(enabled=self.profile.rate_limits if rate_limits is None else rate_limits)
        self.limiter.limits.update(limits or {})
        self.requests = RequestLog()
        self._server: RunningServer | None = None
        if hook_url:
            self.configure_pings(hook_url, webhook_secrets)
        self.app = Starlette(routes=self._routes())

    def _routes(self) -> list[BaseRoute]:
        table = MoltbookApi(self) if self.profile.table == "moltbook" else Api(self)
        return [Mount("/api/v1", routes=table.routes()), Mount("/admin", routes=Admin(self).routes()),
                *table.site_routes()]

    def _new_world(self, auto_notify: bool) -> World:
        world = World(auto_notify=auto_notify, profile=self.profile,
                      on_notification=self.pinger.notify if self.pinger else None)
        world.add_submolt("general", "General", "The default community")  # Moltbook's schema seeds it
        return world

    def configure_pings(self, hook_url: str | None, webhook_secrets: SecretSource | None = None) -> None:
        """Send signed inbox pings to `<hook_url>/hooks/inbox/<agent>` (None: stop sending them).
        Secrets: a name -> secret mapping, a function, or (None) SECRETS_DIR/webhook-<agent>."""
        if hook_url and not self.profile.notifications:
            raise ValueError(f"the {self.profile.name} profile has no notifications, so no inbox pings")
        if self.pinger is not None:
            self._retired_pingers.append(self.pinger)
        self.pinger = InboxPinger(hook_url, webhook_secrets) if hook_url else None
        self.world.on_notification = self.pinger.notify if self.pinger else None

    # --- server -------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._server = await serve(self.app, host=host, port=port)
        return self._server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()
        for pinger in [*self._retired_pingers, *([self.pinger] if self.pinger else [])]:
            await pinger.aclose()
        self._retired_pingers.clear()

    @property
    def url(self) -> str:
        """The Hub's origin (without /api/v1), as HUB_URL takes it."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return self._server.url

    @property
    def api_url(self) -> str:
        """Where the API lives (`<url>/api/v1`); HubClient takes this or `url` as HUB_URL."""
        return f"{self.url}/api/v1"

    # --- seeding and inspection ---------------------------------------------------------------

    def add_agent(self, name: str, type: str = "native", key: str | None = None, description: str = "") -> str:
        """Register an agent; returns its key (the given one, or a new random one)."""
        return self.world.add_agent(name, type, key, description)

    def key_of(self, agent: str) -> str:
        return next(k for k, name in self.world.keys.items() if name == agent)

    def add_post(self, title: str, content: str = "", *, author: str = DEFAULT_HUMAN, submolt: str = "general",
                 score: int = 0, age_s: float = 0.0, url: str | None = None) -> Post:
        """A post by `author`: the agent of that name, else a human. With `url`, a link post (its
        `content` is null in the moltbook profile; mentions in its title count)."""
        return self.world.add_post(self.world.author(author), submolt, title, content, score=score, age_s=age_s,
                                   url=url)

    def add_comment(self, post_id: str, content: str, *, author: str = DEFAULT_HUMAN,
                    parent_id: str | None = None, score: int = 0, notify: bool = True) -> Comment:
        return self.world.add_comment(self.world.author(author), post_id, content, parent_id, score=score,
                                      notify=notify)

    def add_notification(self, agent: str, type: str, *, content: str = "", sender: str = DEFAULT_HUMAN,
                         post_id: str | None = None, comment_id: str | None = None,
                         dm_id: str | None = None) -> Notification:
        return self.world.add_notification(agent, type, sender=self.world.author(sender), content=content,
                                           post_id=post_id, comment_id=comment_id, dm_id=dm_id)

    def mention(self, agent: str, content: str, post_id: str | None = None,
                sender: Author | str = DEFAULT_HUMAN) -> Notification:
        """A human comment mentioning `agent` (on a new post in m/general if no post is given), and the
        `mention` notification pointing at it."""
        self._need_notifications("a mention notification")
        if agent not in self.world.agents:
            raise HubFault(404, f"no agent {agent!r}", "NOT_FOUND")
        author = self.world.author(sender) if isinstance(sender, str) else sender
        if post_id is None:
            post_id = self.world.add_post(author, "general", f"A question for {agent}", content, notify=False).id
        text = content if f"@{agent}" in content else f"@{agent} {content}"
        comment = self.world.add_comment(author, post_id, text, notify=False)
        return self.world.add_notification(agent, "mention", sender=author, content=text, post_id=post_id,
                                           comment_id=comment.id)

    def dm(self, agent: str, content: str, dm_id: str | None = None,
           sender: Author | str = DEFAULT_HUMAN) -> Notification:
        """A DM from a human to `agent` in conversation `dm_id` (a new one if not given), and its notification."""
        self._need_notifications("a DM")
        author = self.world.author(sender) if isinstance(sender, str) else sender
        dm_id = dm_id or new_id("dm")
        note = self.world.add_notification(agent, "dm", sender=author, content=content, dm_id=dm_id)
        self.world.dms.append(DirectMessage(id=new_id("msg"), conversation_id=dm_id, sender=author.name,
                                            content=content, created_at=note.created_at))
        return note

    def _need_notifications(self, what: str) -> None:
        if not self.profile.notifications:
            raise HubFault(400, f"the {self.profile.name} profile has no notifications or DMs, so no {what}; "
                           "make the post or comment itself (it may name @agent)", "NO_NOTIFICATIONS")

    def comments_on(self, post_id: str | None) -> list[Comment]:
        """Every comment on the post, flat, in creation order (`replies` empty; `parent_id`, `depth` set).
        None (a notification's `post_id`, optional in its shape): no post, no comments."""
        return list(self.world.comments.get(post_id, [])) if post_id is not None else []

    def notifications_of(self, agent: str) -> list[Notification]:
        """The agent's notifications in creation order, with their read flags."""
        return list(self.world.notifications.get(agent, []))

    @property
    def consumption(self) -> list[ActivationMetrics]:
        return self.world.consumption

    @property
    def dms(self) -> list[DirectMessage]:
        return self.world.dms

    @property
    def posts(self) -> list[Post]:
        return list(self.world.posts.values())

    # --- knobs --------------------------------------------------------------------------------

    def set_fault(self, fault: Fault | None = None, **fields: Any) -> Fault:
        """Add a fault, e.g. `set_fault(status=503, count=3, path_prefix="/api/v1/notifications")`."""
        fault = fault or Fault(**fields)
        self.faults.add(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def set_rate_limits(self, enabled: bool, **limits: tuple[int, float]) -> None:
        """Moltbook's limits on or off; `requests=(100, 60)`, `posts=(1, 1800)`, `comments=(50, 3600)`."""
        unknown = set(limits) - set(MOLTBOOK_LIMITS)
        if unknown:
            raise HubFault(400, f"unknown rate-limit buckets {sorted(unknown)}", "VALIDATION_ERROR")
        self.limiter.enabled = enabled
        self.limiter.limits.update(limits)  # type: ignore[arg-type]
        self.limiter.reset()

    def set_budget(self, tool_type: str, *, used_pct: float | None = None, limit_usd: float = 10.0) -> None:
        """`used_pct` forces the reported usage; without it usage is computed from consumption received."""
        if limit_usd <= 0:
            raise HubFault(400, "limit_usd must be positive", "VALIDATION_ERROR")
        self.world.budget[tool_type] = ToolBudgetConfig(limit_usd=limit_usd, used_pct=used_pct)

    def reset(self, keep_agents: bool = False) -> None:
        old = self.world
        self.world = self._new_world(old.auto_notify)
        self.world.on_notification = old.on_notification
        if keep_agents:
            self.world.agents, self.world.keys = old.agents, old.keys
            self.world.notifications = {name: [] for name in old.agents}
            self.world.unclaimed, self.world.display_names = old.unclaimed, old.display_names
        self.faults.clear()
        self.limiter.reset()
        self.requests.records.clear()
