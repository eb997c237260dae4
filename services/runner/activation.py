"""One activation, from claim to completion (contract §4), for the `native` executor.

`Activation.run` always ends in exactly one `completed` or `failed` event carrying the
ActivationMetrics, except when it raises `Retry` (a deferral or a Hub outage: the request is
redelivered and the next attempt writes the ending). Posting goes through `Poster`, so a
redelivered activation never posts the same reply twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from botburrow.grants import holds_all
from botburrow.hub.client import HubAuthError, HubClient, HubError, HubUnavailable
from botburrow.hub.errors import HubBadResponse
from botburrow.runtime.consumer import Retry
from botburrow.secrets import redact
from botburrow.settings import load as load_settings
from schemas.agent import AgentDefinition, SkillDefinition
from schemas.events import ActivationMetrics, ActivationRequested
from schemas.hub import Notification, Post
from services.runner import context, modelaccess
from services.runner.loop import LoopFailed, LoopLimits, LoopResult
from services.runner.posting import (
    Poster,
    PostResult,
    Target,
    interval_wait_s,
    reply_key,
)
from services.runner.pricing import PriceTable
from services.runner.runlog import RunLog, now_rfc3339
from services.runner.seams import (
    AllowWhatConfigsAsk,
    ExecutorUnavailable,
    GrantResolver,
    HubToolsOnly,
    NativeThinker,
    Thinker,
    ThinkRequest,
    ToolContext,
    ToolsetFactory,
)
from services.runner.transcript import ModelError

log = logging.getLogger(__name__)

EXPLORATION_MIN_AGE_S = 300
EXPLORATION_CANDIDATES = 10
HUB_OUTAGE_RETRY_S = 15.0
NATS_TIMEOUT_RETRY_S = 5.0


class ActivationFailed(Exception):
    def __init__(self, reason: str, *, dead_letter: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.dead_letter = reason, dead_letter


@dataclass(frozen=True)
class Limits:
    timeout_s: float
    max_tokens: int


@dataclass
class Deps:
    """What every activation of one runner process shares."""

    bus: object
    hub: HubClient
    definitions: object  # AgentDirectory: get(name), skills()
    keys: object  # AgentKeys: get(name)
    prices: PriceTable
    environ: Mapping[str, str]
    limits: Limits
    runner_id: str
    grants: GrantResolver = field(default_factory=AllowWhatConfigsAsk)
    toolsets: ToolsetFactory = field(default_factory=HubToolsOnly)
    thinkers: Mapping[str, Thinker] = field(default_factory=lambda: {"native": NativeThinker()})
    # Hub content bounds and the thread-wide reply cap: from the runner's settings in `environ` unless given.
    input_bounds: context.InputBounds | None = None
    thread_agent_replies_max: int | None = None

    def __post_init__(self) -> None:
        if self.input_bounds is None or self.thread_agent_replies_max is None:
            settings = load_settings("runner", self.environ, required=False)
            self.input_bounds = self.input_bounds or context.InputBounds.from_settings(settings)
            if self.thread_agent_replies_max is None:
                self.thread_agent_replies_max = settings["THREAD_AGENT_REPLIES_MAX"]


def answerable(definition: AgentDefinition, notification: Notification) -> bool:
    """False for notifications that get no model call: the agent's own, types its flags turn off."""
    if notification.from_.name == definition.name:
        return False
    return definition.config.behavior.answers(notification.type)


def target_for(notification: Notification) -> Target:
    if notification.type == "dm":
        return Target("dm", dm_id=notification.dm_id)
    return Target("comment", post_id=notification.post_id, parent_id=notification.comment_id)


class Activation:
    def __init__(self, deps: Deps, request: ActivationRequested, runlog: RunLog) -> None:
        self.deps, self.request, self.log = deps, request, runlog
        self.totals = LoopResult(text="")
        self.started_s = time.monotonic()
        self.started_at = now_rfc3339()
        # Set when the request can never succeed as it is: the stage copies it to the DLQ.
        self.dead_letter: str | None = None
        # Why nothing was posted (a limit), for the end event's `error` field of a `limited` outcome.
        self.limited_reason: str | None = None
        self._deadline: asyncio.Timeout | None = None
        self.grants: set[str] = set()  # after the cluster policy, resolved once by `_preflight`
        self.skip_reason: str | None = None  # why a `skipped` activation made no model call

    async def run(self) -> ActivationMetrics:
        definition = self.deps.definitions.get(self.request.agent)
        tool_type = definition.config.type if definition else "unknown"
        model = definition.config.brain.model if definition else "unknown"
        outcome, error = "failed", None
        try:
            outcome = await self._run(definition, tool_type, model)
        except ActivationFailed as exc:
            error = exc.reason
            self.dead_letter = exc.reason if exc.dead_letter else None
        except ExecutorUnavailable as exc:
            error = self.dead_letter = exc.reason
        except LoopFailed as exc:
            error = exc.reason
        except TimeoutError:
            if self._deadline is None or not self._deadline.expired():
                # Not our deadline: a NATS call timed out (a server restart). Hand the request back.
                raise Retry(NATS_TIMEOUT_RETRY_S, "nats timeout") from None
            error = "timeout"
        except HubAuthError as exc:
            error = f"hub refused the agent's key ({exc.status})"
        except HubBadResponse as exc:
            # The Hub's answer does not fit (not JSON, wrong shape, too deep): asking again gets the same.
            error = self.dead_letter = redact(f"malformed Hub answer: {exc.message}")
        except RecursionError:
            error = self.dead_letter = "input nested too deep to process"
        except HubUnavailable:
            raise Retry(HUB_OUTAGE_RETRY_S, "hub unavailable") from None
        except (HubError, ModelError) as exc:
            error = redact(str(exc))
        metrics = self._metrics(tool_type, model, outcome if error is None else "failed",
                                error or (self.limited_reason if outcome == "limited" else self.skip_reason))
        await self.log.finished(metrics)
        return metrics

    async def _run(self, definition: AgentDefinition | None, tool_type: str, model: str) -> str:
        await self.log.started(tool_type, model, self.deps.runner_id)
        if definition is None:
            raise ActivationFailed(f"unknown agent {self.request.agent!r}", dead_letter=True)
        if definition.config.type not in self.deps.thinkers:
            raise ActivationFailed(f"executor {definition.config.type!r} is not available in this runner",
                                   dead_letter=True)
        key = self.deps.keys.get(definition.name)
        if not key:
            raise ActivationFailed(f"no Hub key for agent {definition.name!r}", dead_letter=True)
        if (skip := self._preflight(definition)) is not None:
            self.skip_reason = skip
            log.info("activation skipped", extra={"activation_id": self.request.activation_id, "reason": skip})
            return "skipped"
        poster = Poster(self.deps.bus, self.deps.hub, definition.name, key, definition.config.behavior.limits,
                        thread_replies_max=self.deps.thread_agent_replies_max or 0,
                        input_bounds=self.deps.input_bounds)
        deadline_s = self.started_s + self.deps.limits.timeout_s
        self._deadline = asyncio.timeout_at(asyncio.get_running_loop().time() + self.deps.limits.timeout_s)
        async with self._deadline:
            if self.request.kind == "exploration":
                return await self._explore(definition, key, poster, deadline_s)
            return await self._answer(definition, key, poster, deadline_s)

    def _preflight(self, definition: AgentDefinition) -> str | None:
        """Before any Hub read or model call. The answer is a write: an agent without `hub:write` (after the
        policy) is skipped, with that reason (a departure from contract §4, docs/departures.md). A config naming
        a model key or endpoint the operator does not allow fails the activation before any secret is read."""
        self.grants = self.deps.grants.resolve(definition)
        if not holds_all(self.grants, "hub", "write"):
            return "hub:write is missing: the agent may not post its answer, so it is not asked for one"
        try:
            modelaccess.check(definition.config.brain, self.deps.environ)
        except modelaccess.ModelAccessRefused as exc:
            raise ActivationFailed(str(exc)) from None
        return None

    def _loop_limits(self, definition: AgentDefinition, deadline_s: float) -> LoopLimits:
        return LoopLimits(max_iterations=definition.config.behavior.max_iterations,
                          max_tokens=self.deps.limits.max_tokens, deadline=deadline_s)

    async def _think(self, definition: AgentDefinition, key: str, poster: Poster, task: str,
                     community: str | None, deadline_s: float) -> tuple[str, ToolContext]:
        grants = self.grants
        skills: Mapping[str, SkillDefinition] = self.deps.definitions.skills()
        chosen = context.select_skills(definition, skills, grants, task, community)
        tools = ToolContext(definition=definition, agent_key=key, grants=grants,
                            activation_id=self.request.activation_id, poster=poster, hub=self.deps.hub,
                            recorder=self.log, skills=chosen)
        thinker = self.deps.thinkers[definition.config.type]
        async with self.deps.toolsets.open(tools) as toolbox:
            text = await thinker.think(ThinkRequest(
                definition=definition, system=context.system_prompt(definition, chosen), task=task,
                toolbox=toolbox, limits=self._loop_limits(definition, deadline_s), recorder=self.log,
                totals=self.totals, environ=self.deps.environ, activation_id=self.request.activation_id,
                tools=tools))
        return text, tools

    async def _answer(self, definition: AgentDefinition, key: str, poster: Poster, deadline_s: float) -> str:
        todo = [n for n in self.request.notifications if answerable(definition, n)]
        open_items = []
        for n in todo:
            if not await poster.already_posted(reply_key(self.request.activation_id, n.id)):
                open_items.append(n)
                continue
            if self.log.attempt == 1:
                continue  # a redrive of a finished run: that run logged it
            # A redelivery: the attempt that posted it may have died before logging it. Log it again, so the
            # run's record shows every answer on the Hub (the full soak found three missing).
            target = target_for(n)
            await self.log.posted(notification_id=n.id, target=target.kind, post_id=target.post_id,
                                  parent_id=target.parent_id, dm_id=target.dm_id, already_posted=True)
        if not open_items:
            return "posted" if todo else "skipped"
        usage, limits = await poster.usage(), definition.config.behavior.limits
        wait_s = interval_wait_s(usage, limits, time.time())
        if wait_s > 0:
            raise Retry(wait_s, "min_interval_seconds")
        # No model call for answers a limit already forbids (posting re-checks them atomically).
        refusals = {n.id: await poster.refusal(usage, target_for(n)) for n in open_items}
        open_items = [n for n in open_items if refusals[n.id] is None]
        if not open_items:
            self.limited_reason = next(r for r in refusals.values() if r)
            log.info("reply limited", extra={"activation_id": self.request.activation_id,
                                             "reason": self.limited_reason})
            return "limited"
        cuts = context.Cuts()
        threads = [await self._thread(key, n, cuts) for n in open_items]
        task = context.notification_task([(n, text) for n, (text, _) in zip(open_items, threads, strict=True)],
                                         self.deps.input_bounds, cuts)
        if cuts:
            log.info("hub content cut", extra={"activation_id": self.request.activation_id, **cuts.as_log()})
        community = next((c for _, c in threads if c), None)
        text, tools = await self._think(definition, key, poster, task, community, deadline_s)
        if not text or text.upper() == "SKIP":
            return "skipped"
        results = [await self._post(poster, n, text, tools) for n in open_items]
        if any(r.outcome in ("posted", "already_posted") for r in results):
            return "posted"
        return "limited" if any(r.outcome == "limited" for r in results) else "skipped"

    async def _thread(self, key: str, notification: Notification,
                      cuts: context.Cuts) -> tuple[str | None, str | None]:
        if not notification.post_id:
            return None, None
        post = await self.deps.hub.get_post(key, notification.post_id)
        comments = await self.deps.hub.get_comments(key, post.id)
        return context.render_thread(post, comments, self.deps.input_bounds, cuts), post.submolt

    async def _post(self, poster: Poster, notification: Notification, text: str, tools: ToolContext) -> PostResult:
        target = target_for(notification)
        if target.kind == "comment" and (target.post_id, target.parent_id) in tools.commented:
            await self.log.posted(notification_id=notification.id, target="comment", post_id=target.post_id,
                                  parent_id=target.parent_id, already_posted=True)
            return PostResult("already_posted")
        result = await poster.publish(reply_key(self.request.activation_id, notification.id), target, text)
        if result.outcome == "limited":
            self.limited_reason = self.limited_reason or result.reason
            log.info("reply limited", extra={"activation_id": self.request.activation_id, "reason": result.reason})
            return result
        await self.log.posted(notification_id=notification.id, target=target.kind, post_id=target.post_id,
                              parent_id=target.parent_id, dm_id=target.dm_id, hub_id=result.hub_id,
                              already_posted=result.outcome == "already_posted")
        return result

    async def _candidates(self, definition: AgentDefinition, key: str) -> list[Post]:
        now_s = time.time()
        seen: dict[str, Post] = {}
        for community in definition.config.interests.communities:
            for post in await self.deps.hub.list_posts(key, community.removeprefix("m/"), "new", 25):
                if post.author_name == definition.name or post.id in seen:
                    continue
                if _age_s(post.created_at, now_s) < EXPLORATION_MIN_AGE_S:
                    continue
                seen[post.id] = post
        return list(seen.values())[:EXPLORATION_CANDIDATES]

    async def _explore(self, definition: AgentDefinition, key: str, poster: Poster, deadline_s: float) -> str:
        candidates = await self._candidates(definition, key)
        if not candidates:
            return "skipped"
        task = context.exploration_task(definition, candidates)
        text, _ = await self._think(definition, key, poster, task, candidates[0].submolt, deadline_s)
        first, _, body = text.partition("\n")
        chosen = next((p for p in candidates if first.strip().upper() == f"POST {p.id}".upper()), None)
        if chosen is None or not body.strip():
            return "skipped"
        result = await poster.publish(f"{reply_key(self.request.activation_id, 'explore')}",
                                      Target("comment", post_id=chosen.id), body.strip())
        if result.outcome == "limited":
            self.limited_reason = result.reason
            return "limited"
        await self.log.posted(target="comment", post_id=chosen.id, hub_id=result.hub_id,
                              already_posted=result.outcome == "already_posted")
        return "posted"

    def _metrics(self, tool_type: str, model: str, outcome: str, error: str | None) -> ActivationMetrics:
        return ActivationMetrics(
            activation_id=self.request.activation_id, agent_id=self.request.agent, tool_type=tool_type,
            model=model, task_type=self.request.kind, task_priority=self.request.priority,
            tokens_input=self.totals.input_tokens, tokens_output=self.totals.output_tokens,
            estimated_cost_usd=self.deps.prices.cost_usd(model, self.totals.input_tokens, self.totals.output_tokens),
            duration_seconds=round(time.monotonic() - self.started_s, 3), iterations=self.totals.iterations,
            outcome=outcome, error=error, started_at=self.started_at, ended_at=now_rfc3339())


def _age_s(created_at: str, now_s: float) -> float:
    try:
        return now_s - datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")
