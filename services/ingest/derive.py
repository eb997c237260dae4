"""Notifications derived from posts and comments, for a Hub that has none of its own (pure: no I/O).

- `mention`: a post (title or text) or a comment naming `@<hub name>`, case-insensitively, on a word
  boundary (`@ann` is not `@anna`, nor `@ann-bot`);
- `reply`: a comment whose parent is the agent's comment;
- `comment`: a top-level comment on the agent's post (a reply under it between others is not one).

One item gives an agent at most one notification, the first of mention, reply, comment that applies; an
agent never gets one for its own post or comment. Every name compared is the agent's Hub name (what
`GET /agents/me` says), lower case; the notification goes to the agent's config name. Its id is derived
from the item, the type and the agent, so reading the same item again gives the same id (JetStream dedup).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from schemas.hub import Author, Comment, Notification, Post, clip
from services.ingest.feedstate import key_part

# `@name` not inside a word or an e-mail address; the name ends where a name character does not follow.
AUTHOR_MAX_CHARS = 100
_MENTION = re.compile(r"(?<![A-Za-z0-9_@])@([A-Za-z0-9_-]{1,64})")


class Identities:
    """The agents' Hub names: config name -> Hub name, and back (both ways lower case on the Hub side)."""

    def __init__(self, hub_names: Mapping[str, str]) -> None:
        self.hub_of = {agent: name.lower() for agent, name in hub_names.items() if name}
        self.agent_of = {name: agent for agent, name in self.hub_of.items()}

    def agent(self, author_name: str) -> str | None:
        """The config name of the agent who wrote as `author_name`, None for anyone else."""
        return self.agent_of.get(author_name.lower()) if author_name else None

    def named_in(self, text: str) -> list[str]:
        """The agents `text` mentions, each once, in order of first mention."""
        found: dict[str, None] = {}
        for match in _MENTION.finditer(text):
            agent = self.agent_of.get(match.group(1).rstrip("-").lower())
            if agent is not None:
                found[agent] = None
        return list(found)


def notification_id(kind: str, item_id: str, agent: str) -> str:
    return f"feed-{kind}-{key_part(item_id)}-{agent}"


def post_text(post: Post) -> str:
    """A post's title and text, or its link (a link post has no text)."""
    body = post.content or post.url or ""
    return f"{post.title}\n\n{body}" if body else post.title


def _author(name: str, author_type: str | None) -> Author:
    # Cut like any Hub text: a hostile name must not push the event past the scheduler's 32 KiB bound.
    name, author_type = clip(name, AUTHOR_MAX_CHARS), clip(author_type or "", AUTHOR_MAX_CHARS)
    return Author(name=name, type=author_type) if author_type else Author(name=name)


def from_post(post: Post, ids: Identities) -> list[tuple[str, Notification]]:
    """The mentions a new post makes (a link post's title counts: its text may be null)."""
    author = ids.agent(post.author_name)
    return [(agent, Notification(id=notification_id("mention", post.id, agent), type="mention", post_id=post.id,
                                 from_=_author(post.author_name, post.author_type), content=post_text(post),
                                 created_at=post.created_at))
            for agent in ids.named_in(post_text(post)) if agent != author]


def from_comment(comment: Comment, post_id: str, post_author: str | None, parent_author: str | None,
                 ids: Identities) -> list[tuple[str, Notification]]:
    """What one new comment tells which agents. `post_author`, `parent_author`: config names, or None
    when a human (or an unknown Hub name) wrote the post or the parent comment."""
    author = ids.agent(comment.author_name)
    kinds: dict[str, str] = {agent: "mention" for agent in ids.named_in(comment.content)}
    if parent_author is not None:
        kinds.setdefault(parent_author, "reply")
    if post_author is not None and comment.parent_id is None:
        kinds.setdefault(post_author, "comment")
    return [(agent, Notification(id=notification_id(kind, comment.id, agent), type=kind, post_id=post_id,
                                 comment_id=comment.id, from_=_author(comment.author_name, comment.author_type),
                                 content=comment.content, created_at=comment.created_at))
            for agent, kind in kinds.items() if agent != author]


def authors_by_id(comments: Iterable[Comment]) -> dict[str, str]:
    """Comment id -> its author's Hub name, for finding whose comment a reply answers."""
    return {c.id: c.author_name for c in comments}
