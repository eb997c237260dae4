"""What the model is told (contract §4 step 2): the system prompt with skills, and the task.

Skills: the ones the config lists, plus those whose trigger keywords appear in the task text (whole
words, case-insensitive) or whose trigger communities match the task's community; then every skill
whose `requires_grants` the agent does not hold is dropped with a warning; deduplicated, in order.

Hub content is written by strangers, so what reaches the model is bounded (`InputBounds`, from the
HUB_* settings): each post and comment is cut to a number of characters, a thread to a depth and a
number of comments. Whatever is cut says so in the text (`[cut: ...]`), and `Cuts` counts it for the
activation's log line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from botburrow.settings import RunnerSettings
from schemas.agent import AgentDefinition, SkillDefinition
from schemas.hub import Comment, Notification, Post, walk_comments
from schemas.hub import clip as clip_text

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


@dataclass(frozen=True)
class InputBounds:
    """How much Hub content one activation shows the model (defaults: the HUB_* settings' defaults)."""

    post_max_chars: int = RunnerSettings.hub_post_max_chars
    comment_max_chars: int = RunnerSettings.hub_comment_max_chars
    thread_max_depth: int = RunnerSettings.hub_thread_max_depth
    thread_max_comments: int = RunnerSettings.hub_thread_max_comments

    @classmethod
    def from_settings(cls, settings: RunnerSettings) -> InputBounds:
        return cls(post_max_chars=settings.hub_post_max_chars, comment_max_chars=settings.hub_comment_max_chars,
                   thread_max_depth=settings.hub_thread_max_depth, thread_max_comments=settings.hub_thread_max_comments)


@dataclass
class Cuts:
    """What the bounds kept from the model, for the log (the text itself carries markers)."""

    texts: int = 0  # posts, comments, titles or notifications cut short
    chars: int = 0  # characters left out of them
    comments: int = 0  # comments left out whole (too deep, past the count, or cut off by the client)

    def __bool__(self) -> bool:
        return bool(self.texts or self.comments)

    def as_log(self) -> dict[str, int]:
        return {"cut_texts": self.texts, "cut_chars": self.chars, "cut_comments": self.comments}


def clip(text: str, max_chars: int, cuts: Cuts | None = None) -> str:
    """`text`, or its first `max_chars` characters and a marker saying how many were left out."""
    if len(text) > max_chars and cuts is not None:
        cuts.texts += 1
        cuts.chars += len(text) - max_chars
    return clip_text(text, max_chars)


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
    # The config's skills in its order, then the triggered ones by name: the system prompt is part of the
    # prompt's cached prefix, so the same skills must always come out in the same order.
    for name, candidate in sorted(skills.items()):
        triggers = candidate.front_matter.triggers
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
    """The stable part of the prompt, as the model is given it before the task: the agent's own prompt, then
    its skills. No timestamps, ids or Hub content here: it must be byte-identical from one activation of
    the agent to the next (the provider caches it; tests/test_caching.py holds it)."""
    parts = [definition.system_prompt.strip()]
    chosen = list(skills)
    if chosen:
        parts.append("## Available Skills")
        parts += [f"### {skill.name}\n\n{skill.body.strip()}" for skill in chosen]
    return "\n\n".join(parts)


NAME_MAX_CHARS = 100


def kept_comments(comments: list[Comment], bounds: InputBounds, cuts: Cuts) -> list[tuple[Comment, int]]:
    """The comments shown, with their depths, in reading order: none deeper than the depth bound, at most
    the count bound. Walked without recursion (a reply chain may be a thousand deep)."""
    kept: list[tuple[Comment, int]] = []
    for comment, depth in walk_comments(comments):
        cuts.comments += comment.replies_omitted
        if depth >= bounds.thread_max_depth or len(kept) >= bounds.thread_max_comments:
            cuts.comments += 1
            continue
        kept.append((comment, depth))
    return kept


def render_thread(post: Post, comments: list[Comment], bounds: InputBounds | None = None,
                  cuts: Cuts | None = None) -> str:
    bounds, cuts = bounds or InputBounds(), cuts if cuts is not None else Cuts()
    where = normalise_community(post.submolt)
    head = (f"Post [{post.id}] in {where} by {clip(post.author_name, NAME_MAX_CHARS, cuts)}: "
            f"{clip(post.title, bounds.comment_max_chars, cuts)}\n{clip(post.content, bounds.post_max_chars, cuts)}")
    before = cuts.comments
    body = [f"{'  ' * depth}- [{c.id}] {clip(c.author_name, NAME_MAX_CHARS, cuts)}: "
            f"{clip(c.content, bounds.comment_max_chars, cuts)}" for c, depth in kept_comments(comments, bounds, cuts)]
    if cuts.comments > before:
        body.append(f"[cut: {cuts.comments - before} more comments not shown (deeper than "
                    f"{bounds.thread_max_depth} levels or past the first {bounds.thread_max_comments})]")
    return head + ("\n\nComments:\n" + "\n".join(body) if body else "\n\n(no comments yet)")


def describe(notification: Notification, bounds: InputBounds | None = None, cuts: Cuts | None = None) -> str:
    bounds = bounds or InputBounds()
    who = clip(notification.from_.name, NAME_MAX_CHARS, cuts) or "someone"
    what = DESCRIPTIONS.get(notification.type, f"{notification.type} from {{who}}").format(who=who)
    where = f" (comment {notification.comment_id} on post {notification.post_id})" if notification.comment_id else (
        f" (post {notification.post_id})" if notification.post_id else "")
    return f"{what}{where}:\n> {clip(notification.content, bounds.comment_max_chars, cuts)}"


def notification_task(items: list[tuple[Notification, str | None]], bounds: InputBounds | None = None,
                      cuts: Cuts | None = None) -> str:
    """The user message for a notification activation: each notification with its thread, if any."""
    sections = []
    for notification, thread in items:
        section = describe(notification, bounds, cuts)
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
    lines += [f"- [{p.id}] {normalise_community(p.submolt)} by {clip(p.author_name, NAME_MAX_CHARS)}: "
              f"{clip(p.title, NAME_MAX_CHARS * 3)}\n  {clip(p.content, 500)}" for p in candidates]
    lines.append("To join one, answer with its id on the first line as `POST <id>` and your comment below it. "
                 "Answer SKIP (alone) if none is worth a reply.")
    return "\n".join(lines)
