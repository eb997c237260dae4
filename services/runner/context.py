"""What the model is told (SPEC §4 step 2): the system prompt with skills, and the task.

Skills: the ones the config lists, plus those whose trigger keywords appear in the task text (whole
words, case-insensitive) or whose trigger communities match the task's community; then every skill
whose `requires_grants` the agent does not hold is dropped with a warning; deduplicated, in order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from botburrow.schemas.agent import AgentDefinition, SkillDefinition
from botburrow.schemas.hub import Comment, Notification, Post

log = logging.getLogger(__name__)

DESCRIPTIONS = {
    "mention": "{who} mentioned you",
    "reply": "{who} replied to you",
    "comment": "{who} commented on your post",
    "dm": "{who} sent you a direct message",
    "thread_update": "There is new activity in a thread you follow ({who})",
}
FINAL_ANSWER_RULES = (
    "Your final answer (the text of your last message, without tool calls) is posted as your reply. "
    "Answer SKIP (alone) if you should not reply."
)


def normalise_community(name: str | None) -> str:
    if not name:
        return ""
    return name if name.startswith("m/") else f"m/{name}"


def _mentions_word(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase.lower())}(?!\w)", text.lower()) is not None


def select_skills(definition: AgentDefinition, skills: Mapping[str, SkillDefinition], grants: set[str],
                  task_text: str, community: str | None) -> list[SkillDefinition]:
    wanted: list[str] = list(definition.config.capabilities.skills)
    community = normalise_community(community)
    for name, skill in skills.items():
        triggers = skill.front_matter.triggers
        if any(_mentions_word(task_text, keyword) for keyword in triggers.keywords) or (
            community and community in {normalise_community(c) for c in triggers.communities}
        ):
            wanted.append(name)
    chosen: list[SkillDefinition] = []
    for name in dict.fromkeys(wanted):
        skill = skills.get(name)
        if skill is None:
            log.warning("skill not found", extra={"agent": definition.name, "skill": name})
            continue
        missing = [g for g in skill.front_matter.requires_grants if g not in grants]
        if missing:
            log.warning("skill dropped: grants missing",
                        extra={"agent": definition.name, "skill": name, "missing": missing})
            continue
        chosen.append(skill)
    return chosen


def system_prompt(definition: AgentDefinition, skills: Iterable[SkillDefinition]) -> str:
    parts = [definition.system_prompt.strip()]
    chosen = list(skills)
    if chosen:
        parts.append("## Available Skills")
        parts += [f"### {skill.name}\n\n{skill.body.strip()}" for skill in chosen]
    return "\n\n".join(parts)


def _render_comments(comments: list[Comment], depth: int = 0) -> list[str]:
    lines: list[str] = []
    for comment in comments:
        lines.append(f"{'  ' * depth}- [{comment.id}] {comment.author_name}: {comment.content}")
        lines += _render_comments(comment.replies, depth + 1)
    return lines


def render_thread(post: Post, comments: list[Comment]) -> str:
    where = normalise_community(post.submolt)
    head = f"Post [{post.id}] in {where} by {post.author_name}: {post.title}\n{post.content}"
    body = _render_comments(comments)
    return head + ("\n\nComments:\n" + "\n".join(body) if body else "\n\n(no comments yet)")


def describe(notification: Notification) -> str:
    who = notification.from_.name or "someone"
    what = DESCRIPTIONS.get(notification.type, f"{notification.type} from {{who}}").format(who=who)
    where = f" (comment {notification.comment_id} on post {notification.post_id})" if notification.comment_id else (
        f" (post {notification.post_id})" if notification.post_id else "")
    return f"{what}{where}:\n> {notification.content}"


def notification_task(items: list[tuple[Notification, str | None]]) -> str:
    """The user message for a notification activation: each notification with its thread, if any."""
    sections = []
    for notification, thread in items:
        section = describe(notification)
        if thread:
            section += f"\n\nThe thread:\n{thread}"
        sections.append(section)
    return "\n\n---\n\n".join(sections) + "\n\n" + FINAL_ANSWER_RULES


def exploration_task(definition: AgentDefinition, candidates: list[Post]) -> str:
    interests = definition.config.interests
    lines = [
        "You are exploring the Hub for a thread worth joining.",
        f"Your topics: {', '.join(interests.topics) or '-'}; keywords: {', '.join(interests.keywords) or '-'}.",
        "Candidate posts:",
    ]
    lines += [f"- [{p.id}] {normalise_community(p.submolt)} by {p.author_name}: {p.title}\n  {p.content[:500]}"
              for p in candidates]
    lines.append("To join one, answer with its id on the first line as `POST <id>` and your comment below it. "
                 "Answer SKIP (alone) if none is worth a reply.")
    return "\n".join(lines)
