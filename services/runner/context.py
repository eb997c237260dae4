"""What the model is told (contract §4 step 2): the system prompt with skills, and the task.

Skills: the ones the config lists, plus those whose trigger keywords appear in the task text (whole
words, case-insensitive) or whose trigger communities match the task's community; then every skill
whose `requires_grants` the agent does not hold is dropped with a warning; deduplicated, in order.

Hub content is written by strangers, so what reaches the model is bounded (`InputBounds`, from the
HUB_* settings): each post and comment is cut to a number of characters, a thread to a depth and a
number of comments. Whatever is cut says so in the text (`[cut: ...]`), and `Cuts` counts it for the
activation's log line.

Then each part of the prompt has a token budget (`ContextBudget`: thread, memories, skills, tools),
counted by `TokenEstimator` (no tokenizer here: characters over a chars-per-token ratio learnt per model
from the input tokens the provider reports). `ContextLedger` applies them and records what was cut and
why; the run log carries its `ContextReport` on the first `llm` event. The cached prefix stays stable: a
thread is cut in the task (the variable part); skills and tools are dropped whole, in their fixed order,
by their own sizes only, so the same agent with the same skills and tools gets the same prefix bytes.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from botburrow.settings import RunnerSettings
from schemas.agent import AgentDefinition, SkillDefinition
from schemas.events import ContextCut, ContextReport
from schemas.hub import Comment, Notification, Post, walk_comments
from schemas.hub import clip as clip_text
from services.runner.transcript import AssistantTurn, Entry, ToolResults, ToolSpec, UserText

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


# -- token budgets -----------------------------------------------------------------------------------------

DEFAULT_CHARS_PER_TOKEN = 3.5  # below English's ~4: an uncalibrated estimate errs towards more tokens
MIN_CALIBRATION_TOKENS = 50  # a smaller reported count is mostly the provider's own framing
CALIBRATION_WEIGHT = 0.2  # each report moves the ratio a fifth of the way (one odd prompt cannot swing it)
MAX_MODELS = 256  # ratios kept (a runner sees a handful of models; a hostile config must not grow this)


@dataclass(frozen=True)
class ContextBudget:
    """Estimated tokens each part of a prompt may take (issue 18). Memories are accepted in definitions but
    not acted on yet (contract §2): their part is counted, and empty."""

    thread_tokens: int = 8_000  # every notification's thread together, in the task
    memories_tokens: int = 2_000
    skills_tokens: int = 12_000  # the skills' bodies in the system prompt
    tools_tokens: int = 40_000  # the tool schemas (the GitHub MCP server's 51 tools: about 20,000)

    def of(self, part: str) -> int:
        return int(getattr(self, f"{part}_tokens"))


PARTS = ("thread", "memories", "skills", "tools")


class TokenEstimator:
    """Tokens from characters, per model, calibrated by the input tokens the provider reports (`observe`)."""

    def __init__(self, default_chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> None:
        self.default = default_chars_per_token
        self._ratios: dict[str, float] = {}

    def chars_per_token(self, model: str) -> float:
        return self._ratios.get(model, self.default)

    def calibrated(self, model: str) -> bool:
        return model in self._ratios

    def tokens(self, chars: int, model: str) -> int:
        return math.ceil(chars / self.chars_per_token(model))

    def chars(self, tokens: int, model: str) -> int:
        return int(tokens * self.chars_per_token(model))

    def observe(self, model: str, chars: int, tokens: int) -> None:
        """One request of `chars` characters was billed `tokens` input tokens (cached or not)."""
        if tokens < MIN_CALIBRATION_TOKENS or chars <= 0:
            return
        sample = min(10.0, max(0.5, chars / tokens))
        old = self._ratios.get(model)
        if old is None and len(self._ratios) >= MAX_MODELS:
            return
        self._ratios[model] = sample if old is None else old + CALIBRATION_WEIGHT * (sample - old)


def request_chars(system: str, transcript: list[Entry], tools: list[ToolSpec]) -> int:
    """The characters of one model request as the estimator counts them (what the provider's count covers)."""
    chars = len(system) + sum(tool_chars(t) for t in tools)
    for entry in transcript:
        if isinstance(entry, UserText):
            chars += len(entry.text)
        elif isinstance(entry, AssistantTurn):
            chars += len(entry.text) + sum(len(c.name) + len(json.dumps(c.arguments, default=str))
                                           for c in entry.tool_calls)
        elif isinstance(entry, ToolResults):
            chars += sum(len(r.content) for r in entry.results)
    return chars


def tool_chars(tool: ToolSpec) -> int:
    return len(tool.name) + len(tool.description) + len(json.dumps(tool.input_schema, separators=(",", ":")))


@dataclass
class ContextLedger:
    """One activation's prompt parts against their budgets: what each kept, what was cut and why."""

    budget: ContextBudget
    estimator: TokenEstimator
    model: str
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    cuts: list[ContextCut] = field(default_factory=list)

    def __post_init__(self) -> None:
        # One ratio for the whole prompt, as it stood when it was built (activations calibrate it meanwhile).
        self.chars_per_token = self.estimator.chars_per_token(self.model)
        self.calibrated = self.estimator.calibrated(self.model)

    def estimate(self, text_or_chars: str | int) -> int:
        chars = text_or_chars if isinstance(text_or_chars, int) else len(text_or_chars)
        return math.ceil(chars / self.chars_per_token)

    def _cut(self, part: str, what: str, tokens: int, kept: int) -> None:
        self.cuts.append(ContextCut(part=part, what=what, tokens=tokens,  # type: ignore[arg-type]
                                    reason=f"{part} budget {self.budget.of(part)} tokens ({kept} kept)"))

    def fit_threads(self, threads: list[tuple[str, str | None]]) -> list[str | None]:
        """Each (post id, thread text) within an equal share of the thread budget: a thread's end is cut."""
        share = self.budget.thread_tokens // max(1, sum(1 for _, text in threads if text))
        fitted: list[str | None] = []
        for post_id, text in threads:
            if text and self.estimate(text) > share:
                keep_chars = int(share * self.chars_per_token)
                left_out = len(text) - keep_chars
                text = (text[:keep_chars] + f"\n[cut: the thread's last {left_out} characters, past the context "
                        f"budget ({self.budget.thread_tokens} tokens for threads)]")
                self._cut("thread", f"post {post_id}: the thread's last {left_out} characters",
                          self.estimate(left_out), share)
            self.tokens["thread"] += self.estimate(text or "")
            fitted.append(text)
        return fitted

    def fit_skills(self, skills: list[SkillDefinition]) -> list[SkillDefinition]:
        """The skills in their order while they fit; one that does not is dropped whole (the prefix stays
        a function of the chosen skills alone)."""
        kept: list[SkillDefinition] = []
        for skill in skills:
            size = self.estimate(skill.body)
            if self.tokens["skills"] + size > self.budget.skills_tokens:
                self._cut("skills", f"skill {skill.name}", size, self.tokens["skills"])
                continue
            self.tokens["skills"] += size
            kept.append(skill)
        return kept

    def fit_tools(self, tools: list[ToolSpec]) -> list[ToolSpec]:
        """The Hub's tools first, then the rest by name, while they fit; one that does not is dropped whole."""
        kept: list[ToolSpec] = []
        for tool in sorted(tools, key=lambda t: (not t.name.startswith("hub__"), t.name)):
            size = self.estimate(tool_chars(tool))
            if self.tokens["tools"] + size > self.budget.tools_tokens:
                self._cut("tools", f"tool {tool.name}", size, self.tokens["tools"])
                continue
            self.tokens["tools"] += size
            kept.append(tool)
        return kept

    def report(self) -> ContextReport:
        return ContextReport(chars_per_token=round(self.chars_per_token, 3), calibrated=self.calibrated,
                             budgets={part: self.budget.of(part) for part in PARTS}, tokens=dict(self.tokens),
                             cuts=list(self.cuts))
