"""The emulated Hub's in-memory world: agents, posts, comments, notifications, DMs, consumption, budget.

Records are the shared msgspec structs, replaced (not mutated) on change; lists keep creation order.
No I/O here: the HTTP layer (`app.py`) and the in-process helpers (`HubEmulator`) both call into it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from botburrow.doubles.hub_emulator.profiles import BOTBURROW, Profile, new_id
from schemas.events import ActivationMetrics
from schemas.hub import Author, Comment, Notification, Post

HUMAN = "human"
MAX_COMMENT_CHARS = 10_000
MAX_TITLE_CHARS = 300
_MENTION_RE = re.compile(r"@([A-Za-z0-9_-]+)")


class HubFault(Exception):
    """A request the Hub refuses: becomes `{"success": false, "error", "code", "hint"}` with `status`."""

    def __init__(self, status: int, error: str, code: str | None, hint: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.code, self.hint = status, error, code, hint
        self.headers = headers or {}
        # More fields of the error body (Moltbook's 429 adds `retryAfter` and `retryAfterMinutes`).
        self.extra = extra or {}


def now_iso(age_s: float = 0.0) -> str:
    moment = datetime.now(UTC) - timedelta(seconds=age_s)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def community(name: str) -> str:
    name = name.strip()
    return name[2:] if name.startswith("m/") else name


class Agent(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    type: str = "native"
    description: str = ""
    created_at: str = ""


class DirectMessage(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    conversation_id: str
    sender: str
    content: str
    created_at: str


@dataclass
class ToolBudgetConfig:
    limit_usd: float = 10.0
    # When set, reported as is instead of being computed from the consumption received.
    used_pct: float | None = None


def budget_status(used_pct: float) -> str:
    if used_pct >= 100:
        return "critical"
    if used_pct >= 90:
        return "throttle"
    if used_pct >= 80:
        return "warning"
    return "healthy"


_RECOMMENDATION = {
    "healthy": "normal operation",
    "warning": "reduce exploration",
    "throttle": "notifications only, no exploration",
    "critical": "critical work only",
}


@dataclass
class Submolt:
    id: str
    name: str
    display_name: str
    description: str
    created_at: str


@dataclass
class World:
    agents: dict[str, Agent] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # key -> agent name
    posts: dict[str, Post] = field(default_factory=dict)
    comments: dict[str, list[Comment]] = field(default_factory=dict)  # post id -> flat, creation order
    comment_posts: dict[str, str] = field(default_factory=dict)  # comment id -> post id
    notifications: dict[str, list[Notification]] = field(default_factory=dict)  # agent -> creation order
    dms: list[DirectMessage] = field(default_factory=list)
    consumption: list[ActivationMetrics] = field(default_factory=list)
    budget: dict[str, ToolBudgetConfig] = field(default_factory=dict)
    auto_notify: bool = True
    profile: Profile = BOTBURROW
    # Called with (agent, unread count) after each notification is stored (the emulator's inbox pings).
    on_notification: Callable[[str, int], None] | None = None
    # What only the `moltbook` profile shows: link posts' urls, communities, claims, display names,
    # follows (follower, followed) and subscriptions (agent, submolt).
    links: dict[str, str] = field(default_factory=dict)  # post id -> url
    submolts: dict[str, Submolt] = field(default_factory=dict)
    unclaimed: set[str] = field(default_factory=set)
    display_names: dict[str, str] = field(default_factory=dict)
    follows: set[tuple[str, str]] = field(default_factory=set)
    subscriptions: set[tuple[str, str]] = field(default_factory=set)
    votes: dict[tuple[str, str], int] = field(default_factory=dict)  # (agent, post or comment id) -> +1/-1
    deleted_comments: set[str] = field(default_factory=set)

    # --- agents -------------------------------------------------------------------------------

    def add_agent(self, name: str, type: str = "native", key: str | None = None, description: str = "") -> str:
        refused = self.profile.name_error(name) or (self.profile.key_error(key) if key else None)
        if refused:
            raise HubFault(400, refused, "BAD_REQUEST")
        if not name or name in self.agents:
            raise HubFault(409, f"agent {name!r} exists or has no name", "CONFLICT")
        key = key or self.profile.new_key()
        if key in self.keys:
            raise HubFault(409, "that key is taken", "CONFLICT")
        self.agents[name] = Agent(id=self.profile.new_id("agt"), name=name, type=type, description=description,
                                  created_at=now_iso())
        self.keys[key] = name
        self.notifications.setdefault(name, [])
        return key

    def agent_of_key(self, key: str) -> Agent | None:
        name = self.keys.get(key)
        return self.agents.get(name) if name else None

    def author(self, name: str | None) -> Author:
        """An agent by name, else a human of that name."""
        if name and name in self.agents:
            agent = self.agents[name]
            return Author(id=agent.id, name=agent.name, type=agent.type)
        return Author(id=f"usr_{name or 'human'}", name=name or "human", type=HUMAN)

    # --- posts and comments -------------------------------------------------------------------

    def add_post(self, author: Author, submolt: str, title: str, content: str, *, score: int = 0,
                 age_s: float = 0.0, notify: bool = True, url: str | None = None) -> Post:
        """A post; with `url`, a link post (Moltbook shows its `content` as null)."""
        if not 1 <= len(title) <= MAX_TITLE_CHARS:
            raise HubFault(400, f"title must be 1..{MAX_TITLE_CHARS} characters", "VALIDATION_ERROR")
        post = Post(id=self.profile.new_id("post"), title=title, content=content,
                    submolt=community(submolt) or "general", author_name=author.name, author_type=author.type,
                    score=score, created_at=now_iso(age_s))
        self.posts[post.id] = post
        self.comments[post.id] = []
        self.add_submolt(post.submolt)
        if url:
            self.links[post.id] = url
        if notify and self.auto_notify and self.profile.notifications:
            self._notify_mentions(author, f"{title}\n{content}" if url else content, post.id, None, set())
        return post

    def add_submolt(self, name: str, display_name: str = "", description: str = "") -> Submolt:
        """The community `name`, created if new."""
        if name not in self.submolts:
            self.submolts[name] = Submolt(id=self.profile.new_id("sub"), name=name,
                                          display_name=display_name or name.capitalize(),
                                          description=description, created_at=now_iso())
        return self.submolts[name]

    def post(self, post_id: str) -> Post:
        post = self.posts.get(post_id)
        if post is None:
            raise HubFault(404, "post not found", "NOT_FOUND")
        return post

    def list_posts(self, submolt: str | None, sort: str) -> list[Post]:
        found = [p for p in self.posts.values() if not submolt or p.submolt == community(submolt)]
        found.sort(key=lambda p: p.created_at, reverse=True)
        if sort in ("hot", "top"):
            found.sort(key=lambda p: p.score, reverse=True)
        return found

    def add_comment(self, author: Author, post_id: str, content: str, parent_id: str | None = None, *,
                    score: int = 0, notify: bool = True) -> Comment:
        post = self.post(post_id)
        if not 1 <= len(content) <= MAX_COMMENT_CHARS:
            raise HubFault(400, f"content must be 1..{MAX_COMMENT_CHARS} characters", "VALIDATION_ERROR")
        parent = None
        if parent_id:
            parent = next((c for c in self.comments[post_id] if c.id == parent_id), None)
            if parent is None:
                raise HubFault(404, "parent comment not found on this post", "NOT_FOUND")
        comment = Comment(id=self.profile.new_id("cmt"), content=content, parent_id=parent_id, author_name=author.name,
                          author_type=author.type, score=score, depth=parent.depth + 1 if parent else 0,
                          created_at=now_iso())
        self.comments[post_id].append(comment)
        self.comment_posts[comment.id] = post_id
        self.posts[post_id] = msgspec.structs.replace(post, comment_count=post.comment_count + 1)
        if notify and self.auto_notify and self.profile.notifications:
            self._notify_comment(author, post, parent, comment)
        return comment

    def comment_tree(self, post_id: str, sort: str = "new", limit: int = 100) -> list[Comment]:
        flat = self.comments.get(post_id)
        if flat is None:
            raise HubFault(404, "post not found", "NOT_FOUND")
        children: dict[str | None, list[Comment]] = {}
        for c in flat:
            children.setdefault(c.parent_id, []).append(c)

        def build(parent_id: str | None) -> list[Comment]:
            level = list(children.get(parent_id, []))
            if sort in ("new", "hot"):
                level.reverse()
            if sort in ("top", "hot"):
                level.sort(key=lambda c: c.score, reverse=True)
            return [msgspec.structs.replace(c, replies=build(c.id)) for c in level]

        return build(None)[:limit]

    # --- notifications and DMs ----------------------------------------------------------------

    def add_notification(self, agent: str, type: str, *, sender: Author, content: str = "",
                         post_id: str | None = None, comment_id: str | None = None,
                         dm_id: str | None = None) -> Notification:
        if not self.profile.notifications:
            raise HubFault(400, f"the {self.profile.name} profile has no notifications", "NO_NOTIFICATIONS")
        if agent not in self.agents:
            raise HubFault(404, f"no agent {agent!r}", "NOT_FOUND")
        note = Notification(id=new_id("ntf"), type=type, post_id=post_id, comment_id=comment_id, dm_id=dm_id,
                            from_=sender, content=content, created_at=now_iso())
        self.notifications[agent].append(note)
        if self.on_notification is not None:
            self.on_notification(agent, sum(1 for n in self.notifications[agent] if not n.read))
        return note

    def mark_read(self, agent: str, ids: list[str]) -> int:
        wanted, marked = set(ids), 0
        notes = self.notifications.get(agent, [])
        for i, note in enumerate(notes):
            if note.id in wanted and not note.read:
                notes[i] = msgspec.structs.replace(note, read=True)
                marked += 1
        return marked

    def send_dm(self, sender: str, conversation_id: str, content: str) -> DirectMessage:
        if not content:
            raise HubFault(400, "content must not be empty", "VALIDATION_ERROR")
        message = DirectMessage(id=self.profile.new_id("msg"), conversation_id=conversation_id, sender=sender,
                                content=content, created_at=now_iso())
        self.dms.append(message)
        return message

    def _notify_comment(self, author: Author, post: Post, parent: Comment | None, comment: Comment) -> None:
        notified = {author.name}
        target = parent.author_name if parent else post.author_name
        kind = "reply" if parent else "comment"
        if target not in notified and target in self.agents:
            self.add_notification(target, kind, sender=author, content=comment.content, post_id=post.id,
                                  comment_id=comment.id)
            notified.add(target)
        self._notify_mentions(author, comment.content, post.id, comment.id, notified)

    def _notify_mentions(self, author: Author, content: str, post_id: str, comment_id: str | None,
                         notified: set[str]) -> None:
        notified = notified | {author.name}
        for name in _MENTION_RE.findall(content):
            if name in self.agents and name not in notified:
                self.add_notification(name, "mention", sender=author, content=content, post_id=post_id,
                                      comment_id=comment_id)
                notified.add(name)

    # --- search, consumption, budget ----------------------------------------------------------

    def search(self, q: str, limit: int) -> dict[str, list[Any]]:
        needle = q.lower()
        posts = [p for p in self.list_posts(None, "new")
                 if needle in p.title.lower() or needle in p.content.lower()][:limit]
        agents = [{"id": a.id, "name": a.name, "description": a.description, "type": a.type}
                  for a in self.agents.values() if needle in a.name.lower() or needle in a.description.lower()]
        names = sorted({p.submolt for p in self.posts.values()})
        submolts = [{"name": n, "display_name": f"m/{n}"} for n in names if needle in n.lower()]
        return {"posts": posts, "agents": agents[:limit], "submolts": submolts[:limit]}

    def add_consumption(self, events: list[ActivationMetrics]) -> int:
        """Store events; a repeated `activation_id` is counted once. Returns how many were new."""
        seen = {e.activation_id for e in self.consumption}
        new = 0
        for event in events:
            if event.activation_id not in seen:
                self.consumption.append(event)
                seen.add(event.activation_id)
                new += 1
        return new

    def budget_health(self) -> dict[str, Any]:
        spent: dict[str, float] = {}
        for event in self.consumption:
            spent[event.tool_type] = spent.get(event.tool_type, 0.0) + event.estimated_cost_usd
        tool_types = set(self.budget) | {a.type for a in self.agents.values()} | set(spent)
        tools, total_limit = {}, 0.0
        for tool_type in sorted(tool_types):
            config = self.budget.get(tool_type, ToolBudgetConfig())
            used_usd = spent.get(tool_type, 0.0)
            used_pct = config.used_pct if config.used_pct is not None else 100 * used_usd / config.limit_usd
            status = budget_status(used_pct)
            tools[tool_type] = {"status": status, "used_pct": round(used_pct, 2),
                                "remaining_usd": round(max(0.0, config.limit_usd * (1 - used_pct / 100)), 4),
                                "recommendation": _RECOMMENDATION[status]}
            total_limit += config.limit_usd
        total_spent = sum(spent.values())
        collective_pct = 100 * total_spent / total_limit if total_limit else 0.0
        return {"tools": tools, "collective": {"spent_usd": round(total_spent, 4), "limit_usd": total_limit,
                                               "used_pct": round(collective_pct, 2),
                                               "status": budget_status(collective_pct)}}

    def snapshot(self) -> dict[str, Any]:
        """Everything but the keys, for `GET /admin/state`."""
        return {
            "agents": list(self.agents.values()),
            "posts": list(self.posts.values()),
            "comments": {pid: flat for pid, flat in self.comments.items()},
            "notifications": self.notifications,
            "dms": self.dms,
            "consumption": self.consumption,
        }
