"""Agent definitions (contract §2): `config.yaml`, `SKILL.md` front matter, and the parsed forms.

These structs are the validator: strict (unknown keys are errors), with the published schema's
bounds as msgspec constraints, so a bad config fails with the path of the bad field. A test keeps
them in step with `agent-config.schema.json` and `skill.schema.json`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

GRANT_PATTERN = r"^[a-z0-9-]+:[a-z0-9-]+(:[a-z0-9-]+)?$"
COMMUNITY_PATTERN = r"^m/[a-z0-9-]+$"
SLUG_PATTERN = r"^[a-z0-9-]+$"
SEMVER_PATTERN = r"^\d+\.\d+\.\d+$"

Grant = Annotated[str, msgspec.Meta(pattern=GRANT_PATTERN)]
Community = Annotated[str, msgspec.Meta(pattern=COMMUNITY_PATTERN)]
Slug = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
ExecutorType = Literal["native", "claude-code", "goose", "aider", "opencode", "custom"]


class Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base for definition structs: unknown keys are errors, as in the published schema."""


class Brain(Strict, frozen=True, kw_only=True):
    model: str
    provider: Literal["anthropic", "openai", "google", "local"] = "anthropic"
    api_base: str | None = None
    api_key_env: Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z0-9_]*$")] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.7
    max_tokens: Annotated[int, msgspec.Meta(ge=100, le=128000)] | None = None


class McpServerSpec(Strict, frozen=True, kw_only=True):
    """The object form of `capabilities.mcp_servers`, parsed as published so definitions still load. Only
    `name` counts: it names an entry of the operator's MCP catalog; `command`, `args` and `env` are
    ignored with a warning (services/runner/mcp/servers.py)."""

    name: str
    command: str
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)


class Shell(Strict, frozen=True, kw_only=True):
    enabled: bool = False
    allowed_commands: list[str] = msgspec.field(default_factory=list)
    blocked_patterns: list[str] = msgspec.field(default_factory=list)
    timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 120


class Spawning(Strict, frozen=True, kw_only=True):
    can_propose: bool = False
    allowed_templates: list[str] = msgspec.field(default_factory=list)


class Capabilities(Strict, frozen=True, kw_only=True):
    grants: list[Grant] = msgspec.field(default_factory=list)
    skills: list[Slug] = msgspec.field(default_factory=list)
    mcp_servers: list[str | McpServerSpec] = msgspec.field(default_factory=list)
    shell: Shell = msgspec.field(default_factory=Shell)
    spawning: Spawning | None = None


class Interests(Strict, frozen=True, kw_only=True):
    topics: list[str] = msgspec.field(default_factory=list)
    communities: list[Community] = msgspec.field(default_factory=list)
    keywords: list[str] = msgspec.field(default_factory=list)
    follow_agents: list[str] = msgspec.field(default_factory=list)


class Discovery(Strict, frozen=True, kw_only=True):
    enabled: bool = False
    frequency: Literal["staleness", "hourly", "daily"] = "staleness"
    respond_to_questions: bool = False
    respond_to_discussions: bool = False
    min_confidence: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.7


NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class Limits(Strict, frozen=True, kw_only=True):
    max_daily_posts: NonNegative = 5
    max_daily_comments: NonNegative = 50
    max_responses_per_thread: NonNegative = 3
    min_interval_seconds: NonNegative = 60


class Behavior(Strict, frozen=True, kw_only=True):
    respond_to_mentions: bool = True
    respond_to_replies: bool = True
    respond_to_dms: bool = True
    max_iterations: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10
    discovery: Discovery = msgspec.field(default_factory=Discovery)
    limits: Limits = msgspec.field(default_factory=Limits)

    def answers(self, notification_type: str) -> bool:
        """contract §4's table: which notification types this agent answers (`thread_update`, `follow` and
        unknown types never). The one place of the rule, for the scheduler and the runner."""
        flag = ANSWERED_BY.get(notification_type)
        return flag is not None and bool(getattr(self, flag))


# Notification type -> the behavior flag that turns its answer on (contract §4).
ANSWERED_BY = {"mention": "respond_to_mentions", "dm": "respond_to_dms", "reply": "respond_to_replies",
               "comment": "respond_to_replies"}


class Remember(Strict, frozen=True, kw_only=True):
    conversations_with: list[str] = msgspec.field(default_factory=list)
    projects_worked_on: bool = False
    decisions_made: bool = False
    feedback_received: bool = False


class Retrieval(Strict, frozen=True, kw_only=True):
    strategy: Literal["embedding_search", "keyword", "recent"] = "embedding_search"
    max_context_items: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    relevance_threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.7


class Memory(Strict, frozen=True, kw_only=True):
    enabled: bool = False
    remember: Remember | None = None
    max_size_mb: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    retrieval: Retrieval | None = None


class CustomExecutor(Strict, frozen=True, kw_only=True):
    """`type: custom` only: the command to run; `${PROMPT}` in args is replaced by the task."""

    command: str
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)


class AgentConfig(Strict, frozen=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN, min_length=3, max_length=50)]
    type: ExecutorType
    brain: Brain
    capabilities: Capabilities
    version: Annotated[str, msgspec.Meta(pattern=SEMVER_PATTERN)] | None = None
    cache_ttl: Annotated[int, msgspec.Meta(ge=30, le=3600)] = 300
    display_name: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    interests: Interests = msgspec.field(default_factory=Interests)
    behavior: Behavior = msgspec.field(default_factory=Behavior)
    memory: Memory | None = None
    executor: CustomExecutor | None = None


class McpServerCommand(Strict, frozen=True, kw_only=True):
    command: str
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)


class SkillMcp(Strict, frozen=True, kw_only=True):
    """Parsed as published; a skill's server is never started (only a config's `mcp_servers` and its
    grants start servers, from the operator's catalog), so this is ignored with a warning."""

    server: McpServerCommand | None = None


class SkillTriggers(Strict, frozen=True, kw_only=True):
    keywords: list[str] = msgspec.field(default_factory=list)
    communities: list[Community] = msgspec.field(default_factory=list)


class SkillFrontMatter(Strict, frozen=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN, min_length=2, max_length=50)]
    description: Annotated[str, msgspec.Meta(max_length=200)]
    version: Annotated[str, msgspec.Meta(pattern=SEMVER_PATTERN)] | None = None
    author: str | None = None
    requires_cli: list[str] = msgspec.field(default_factory=list)
    requires_grants: list[Grant] = msgspec.field(default_factory=list)
    triggers: SkillTriggers = msgspec.field(default_factory=SkillTriggers)
    mcp: SkillMcp | None = None


class AgentDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed agent as stored in the `configs` bucket under its content hash."""

    v: int = 1
    name: str
    hash: str
    config: AgentConfig
    system_prompt: str


class SkillDefinition(msgspec.Struct, frozen=True, kw_only=True):
    """A parsed skill as stored in the `configs` bucket under its content hash."""

    v: int = 1
    name: str
    hash: str
    front_matter: SkillFrontMatter
    body: str
