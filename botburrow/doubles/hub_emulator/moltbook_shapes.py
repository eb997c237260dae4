"""How the `moltbook` profile shows the world: Moltbook's row shapes (its SQL's column lists), not ours.

Posts carry `url` and `post_type`, and a link post's `content` is null; nobody has an `author_type` (every
author is an agent there); the answers to a create carry no author at all; comment lists are trees built
from one flat, limited query (depth first, then the sort), so a reply whose parent was cut off is a root.
"""

from __future__ import annotations

import uuid
from typing import Any

from botburrow.doubles.hub_emulator.state import Agent, World
from schemas.hub import Comment, Post


def author_id(world: World, name: str) -> str:
    """The agent's id; a seeded human gets a stable UUID of its name (Moltbook has only agents)."""
    agent = world.agents.get(name)
    return agent.id if agent else str(uuid.uuid5(uuid.NAMESPACE_URL, f"moltbook-human:{name}"))


def post_created(world: World, post: Post) -> dict[str, Any]:
    url = world.links.get(post.id)
    return {"id": post.id, "title": post.title, "content": None if url else (post.content or None), "url": url,
            "submolt": post.submolt, "post_type": "link" if url else "text", "score": post.score,
            "comment_count": post.comment_count, "created_at": post.created_at}


def post_row(world: World, post: Post) -> dict[str, Any]:
    return {**post_created(world, post), "author_name": post.author_name,
            "author_display_name": world.display_names.get(post.author_name, post.author_name)}


def post_full(world: World, post: Post, viewer: str) -> dict[str, Any]:
    """`GET /posts/:id`: every column of the row, the author, and the viewer's vote."""
    up = sum(1 for (_, target), v in world.votes.items() if target == post.id and v > 0)
    down = sum(1 for (_, target), v in world.votes.items() if target == post.id and v < 0)
    submolt = world.add_submolt(post.submolt)
    return {**post_row(world, post), "author_id": author_id(world, post.author_name), "submolt_id": submolt.id,
            "upvotes": up, "downvotes": down, "is_pinned": False, "is_deleted": False,
            "updated_at": post.created_at, "userVote": world.votes.get((viewer, post.id))}


def comment_created(comment: Comment) -> dict[str, Any]:
    return {"id": comment.id, "content": comment.content, "score": comment.score, "depth": comment.depth,
            "created_at": comment.created_at}


def comment_row(world: World, comment: Comment) -> dict[str, Any]:
    return {"id": comment.id, "content": comment.content, "score": comment.score,
            "upvotes": max(0, comment.score), "downvotes": max(0, -comment.score), "parent_id": comment.parent_id,
            "depth": comment.depth, "created_at": comment.created_at, "author_name": comment.author_name,
            "author_display_name": world.display_names.get(comment.author_name, comment.author_name)}


def comment_full(world: World, post_id: str, comment: Comment) -> dict[str, Any]:
    return {**comment_row(world, comment), "post_id": post_id, "author_id": author_id(world, comment.author_name),
            "is_deleted": comment.id in world.deleted_comments, "updated_at": comment.created_at}


def comment_tree(world: World, post_id: str, sort: str, limit: int) -> list[dict[str, Any]]:
    """Moltbook's listing: the flat rows ordered by depth then `sort`, cut at `limit`, then nested."""
    flat = list(world.comments.get(post_id, []))
    if sort == "new":
        flat.sort(key=lambda c: c.created_at, reverse=True)
    elif sort == "controversial":
        flat.sort(key=lambda c: abs(c.score))
    else:  # top: score, then oldest first
        flat.sort(key=lambda c: c.created_at)
        flat.sort(key=lambda c: c.score, reverse=True)
    flat.sort(key=lambda c: c.depth)  # stable: depth first, the sort within each depth
    rows = {c.id: {**comment_row(world, c), "replies": []} for c in flat[:limit]}
    roots: list[dict[str, Any]] = []
    for row in rows.values():
        parent = rows.get(row["parent_id"]) if row["parent_id"] else None
        (parent["replies"] if parent else roots).append(row)
    return roots


def agent_me(world: World, agent: Agent) -> dict[str, Any]:
    claimed = agent.name not in world.unclaimed
    return {"id": agent.id, "name": agent.name, "displayName": world.display_names.get(agent.name, agent.name),
            "description": agent.description, "karma": karma(world, agent.name),
            "status": "active" if claimed else "pending_claim", "isClaimed": claimed, "createdAt": agent.created_at}


def agent_profile(world: World, agent: Agent) -> dict[str, Any]:
    return {"name": agent.name, "displayName": world.display_names.get(agent.name, agent.name),
            "description": agent.description, "karma": karma(world, agent.name),
            "followerCount": sum(1 for _, followed in world.follows if followed == agent.name),
            "followingCount": sum(1 for follower, _ in world.follows if follower == agent.name),
            "isClaimed": agent.name not in world.unclaimed, "createdAt": agent.created_at,
            "lastActive": agent.created_at}


def karma(world: World, name: str) -> int:
    posts = sum(p.score for p in world.posts.values() if p.author_name == name)
    comments = sum(c.score for flat in world.comments.values() for c in flat if c.author_name == name)
    return posts + comments


def submolt_row(world: World, name: str) -> dict[str, Any]:
    submolt = world.add_submolt(name)
    return {"id": submolt.id, "name": submolt.name, "display_name": submolt.display_name,
            "description": submolt.description,
            "subscriber_count": sum(1 for _, s in world.subscriptions if s == name),
            "created_at": submolt.created_at}


def search_post(world: World, post: Post) -> dict[str, Any]:
    row = post_row(world, post)
    return {k: row[k] for k in ("id", "title", "content", "url", "submolt", "score", "comment_count",
                                "created_at", "author_name")}


def search_agent(world: World, agent: Agent) -> dict[str, Any]:
    return {"id": agent.id, "name": agent.name, "display_name": world.display_names.get(agent.name, agent.name),
            "description": agent.description, "karma": karma(world, agent.name),
            "is_claimed": agent.name not in world.unclaimed}
