"""Every setting the services read, in one table (contract §7), and the one way to read them.

A service calls `load(stage)` once at start-up. Every missing or invalid setting is named in one
error, and the service exits non-zero. Nothing else in the code reads the environment for settings
(secrets go through `botburrow.secrets`), so the deployment manifests can be checked against this
table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

STAGES = ("ingest", "scheduler", "runner", "metrics", "configsync")
ALL = frozenset(STAGES)


class SettingsError(SystemExit):
    """Raised with every bad setting named; exits the process non-zero."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be {low}..{high}")
        return value

    return parse


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number (0..65535)")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw

    return parse


def _url(raw: str) -> str:
    if "://" not in raw:
        raise ValueError("must be a URL such as http://host:port")
    return raw.rstrip("/")


# Credentials that are never a model key, whatever MODEL_KEY_ENVS or a config says (issue 14).
NEVER_MODEL_KEYS = frozenset({"HUB_API_KEY", "R2_ACCESS_KEY", "R2_SECRET_KEY", "NATS_URL", "NATS_CREDS", "NATS_TOKEN",
                              "NATS_USER", "NATS_PASSWORD", "NATS_NKEY", "GITHUB_PERSONAL_ACCESS_TOKEN",
                              "BRAVE_API_KEY", "BOTBURROW_AGENT_KEYS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})


def _model_key_envs(raw: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    if bad := sorted(n for n in names if not n.replace("_", "").isalnum() or not n[0].isalpha() or not n.isupper()):
        raise ValueError(f"not environment variable names: {', '.join(bad)}")
    if never := sorted(names & NEVER_MODEL_KEYS):
        raise ValueError(f"{', '.join(never)} is not a model key")
    return names


def _url_list(raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip().rstrip("/") for u in raw.split(",") if u.strip())
    if bad := [u for u in urls if not u.startswith(("http://", "https://"))]:
        raise ValueError(f"not http(s) URLs: {', '.join(bad)}")
    return urls


def _grant_policy_file(raw: str) -> str:
    """Read and checked at start: a policy with a malformed grant stops the runner, naming the grant."""
    from botburrow.grants import GrantPolicy, PolicyError  # here: every module imports settings

    try:
        GrantPolicy.load(raw)
    except PolicyError as exc:
        raise ValueError(str(exc)) from None
    return raw


@dataclass(frozen=True)
class Setting:
    name: str
    doc: str
    stages: frozenset[str]
    default: str | None = None
    required: bool = False
    parse: Callable[[str], Any] = str


DEFAULT_METRICS_PORTS = {"ingest": 9101, "scheduler": 9102, "runner": 9103, "metrics": 9104, "configsync": 9105}

SETTINGS: list[Setting] = [
    Setting("NATS_URL", "NATS server(s), comma-separated", ALL, "nats://127.0.0.1:4222"),
    Setting("NATS_CREDS", "NATS credentials file", ALL),
    Setting("HUB_URL", "the Hub's origin, without /api/v1", frozenset({"ingest", "scheduler", "runner", "metrics"}),
            required=True, parse=_url),
    Setting("AGENTS_SOURCE", "agent definitions: s3://bucket[/prefix] or a directory",
            frozenset({"configsync"}), required=True),
    Setting("R2_ENDPOINT", "S3/R2 endpoint URL for an s3:// AGENTS_SOURCE", frozenset({"configsync"}), parse=_url),
    Setting("AGENT_KEYS_DIR", "directory of agent Hub key files, one per agent name",
            frozenset({"ingest", "runner"})),
    Setting("SECRETS_DIR", "directory of secret files (Kubernetes-secret style)", ALL),
    Setting("GRANT_POLICY_FILE", "grant policy YAML; unset allows what configs ask", frozenset({"runner"}),
            parse=_grant_policy_file),
    Setting("ANTHROPIC_BASE_URL", "Anthropic API base URL", frozenset({"runner"}), parse=_url),
    Setting("MODEL_BASE_URL_OVERRIDE", "local mode and tests only: every model call goes here",
            frozenset({"runner"}), parse=_url),
    Setting("MODEL_KEY_ENVS", "the variables (or their kebab-case secret files) a config's brain.api_key_env may name",
            frozenset({"runner"}), "ANTHROPIC_API_KEY,OPENAI_API_KEY", parse=_model_key_envs),
    Setting("MODEL_API_BASES", "model endpoints a config's brain.api_base may name (comma-separated base URLs)",
            frozenset({"runner"}), "https://api.anthropic.com,https://api.openai.com/v1", parse=_url_list),
    Setting("PRICE_TABLE_FILE", "model price table (YAML or JSON, USD per million tokens)",
            frozenset({"runner"})),
    Setting("POLL_INTERVAL_SECONDS", "Hub notification polling interval", frozenset({"ingest"}), "30",
            parse=_positive_float),
    Setting("RUNNER_CONCURRENCY", "activations one runner process runs at once", frozenset({"runner"}), "4",
            parse=_positive_int),
    Setting("ACTIVATION_TIMEOUT_SECONDS", "wall-clock limit of one activation", frozenset({"runner"}), "600",
            parse=_positive_float),
    Setting("ACTIVATION_MAX_TOKENS", "token limit of one activation, all turns", frozenset({"runner"}), "200000",
            parse=_positive_int),
    Setting("SANDBOX_BACKEND", "bwrap, docker or none (local mode only)", frozenset({"runner"}), "bwrap",
            parse=_choice("bwrap", "docker", "none")),
    Setting("SANDBOX_MEMORY_MB", "memory limit of one CLI sandbox (the CLI, its MCP relays, the forwarder)",
            frozenset({"runner"}), "2048", parse=_positive_int),
    Setting("SANDBOX_WORKSPACE_MB", "total size limit of one sandbox workspace (enforced as root: a loop mount)",
            frozenset({"runner"}), "512", parse=_positive_int),
    Setting("MCP_CATALOG_FILE", "YAML catalog of the operator's MCP servers besides the built-in ones",
            frozenset({"runner"})),
    Setting("SANDBOX_IMAGE", "docker sandbox: the per-activation container image", frozenset({"runner"}),
            "botburrow-sandbox:0.1.0"),
    Setting("DOCKER_HOST", "docker sandbox: the engine's address (unix:///path or tcp://...)", frozenset({"runner"})),
    Setting("GITHUB_HOST", "github MCP server: --gh-host for GitHub Enterprise (the server drops any port)",
            frozenset({"runner"})),
    Setting("MCP_CALL_TIMEOUT_SECONDS", "limit of one MCP tool call", frozenset({"runner"}), "60",
            parse=_positive_float),
    Setting("MCP_START_TIMEOUT_SECONDS", "limit for starting one MCP server", frozenset({"runner"}), "30",
            parse=_positive_float),
    Setting("MCP_REUSE_IDLE_SECONDS", "how long an idle MCP server is kept for the same agent's next activation",
            frozenset({"runner"}), "300", parse=_positive_float),
    Setting("HUB_POST_MAX_CHARS", "runner: characters of one Hub post shown to the model (the rest is cut, marked)",
            frozenset({"runner"}), "20000", parse=_positive_int),
    Setting("HUB_COMMENT_MAX_CHARS", "runner: characters of one Hub comment or notification shown to the model",
            frozenset({"runner"}), "4000", parse=_positive_int),
    Setting("HUB_THREAD_MAX_DEPTH", "runner: comment levels of a thread shown to the model (1..100)",
            frozenset({"runner"}), "20", parse=_bounded_int(1, 100)),
    Setting("HUB_THREAD_MAX_COMMENTS", "runner: comments of a thread shown to the model",
            frozenset({"runner"}), "50", parse=_positive_int),
    Setting("THREAD_AGENT_REPLIES_MAX", "runner: comments all agents together may post in one thread (0: no cap)",
            frozenset({"runner"}), "20", parse=_bounded_int(0, 1_000_000)),
    Setting("STREAM_REPLICAS", "replicas for `botburrow streams apply`", frozenset(), "1", parse=_positive_int),
    Setting("METRICS_PORT", "this service's metrics and health port (0 picks a free one)", ALL, parse=_port),
    Setting("METRICS_HOST", "address the metrics and health port binds: loopback locally, the pod IP in Kubernetes",
            ALL, "127.0.0.1"),
    Setting("CONSUMPTION_BATCH_SIZE", "metrics: consumption events per POST /system/consumption",
            frozenset({"metrics"}), "100", parse=_positive_int),
    Setting("CONSUMPTION_FLUSH_SECONDS", "metrics: longest wait before a partial batch is posted",
            frozenset({"metrics"}), "2", parse=_positive_float),
    Setting("CONFIG_POLL_SECONDS", "configsync: how often the source is checked for changes",
            frozenset({"configsync"}), "30", parse=_positive_float),
    Setting("DEFINITION_FILE_MAX_BYTES", "configsync: largest definition file read from AGENTS_SOURCE; a bigger "
            "one is refused, unread (a stored definition must fit a 1 MiB NATS message)",
            frozenset({"configsync"}), "262144", parse=_positive_int),
    Setting("RUNNER_GRACE_SECONDS", "runner: time to finish held work after SIGTERM", frozenset({"runner"}), "30",
            parse=_positive_float),
    Setting("BOTBURROW_TOOLS_DIR", "where the pinned MCP servers and CLIs are installed (see tools/README.md)",
            frozenset({"runner"})),
    Setting("RUNNER_ACK_WAIT_SECONDS", "ack wait of the runner consumers and TTL of the leases bucket, used when "
            "they are created and by `botburrow streams apply`; runners heartbeat at a third of the live values",
            ALL, "60", parse=_positive_float),
    Setting("SCHEDULER_TICK_SECONDS", "scheduler: how often timed work (exploration, stuck agents) runs",
            frozenset({"scheduler"}), "1", parse=_positive_float),
    Setting("EXPLORE_MIN_GAP_SECONDS", "scheduler: minimum time between an agent's explorations",
            frozenset({"scheduler"}), "900", parse=_positive_float),
    Setting("EXPLORE_LOW_BACKLOG_MAX", "scheduler: exploration is queued only while runner-low holds fewer",
            frozenset({"scheduler"}), "50", parse=_positive_int),
    Setting("BUDGET_CACHE_SECONDS", "scheduler: how long GET /system/budget-health is cached",
            frozenset({"scheduler"}), "60", parse=_positive_float),
    Setting("BUDGET_STALE_SECONDS", "scheduler: how long the last known budget status holds while the Hub is down",
            frozenset({"scheduler"}), "600", parse=_positive_float),
    Setting("SCHEDULER_STUCK_AFTER_SECONDS", "scheduler: age after which an in-flight activation with no lease is lost",
            frozenset({"scheduler"}), "1800", parse=_positive_float),
    Setting("LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", ALL, "INFO",
            parse=_choice("DEBUG", "INFO", "WARNING", "ERROR")),
]
BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Settings:
    stage: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        if name not in BY_NAME:
            raise KeyError(f"{name} is not a known setting (add it to botburrow.settings.SETTINGS)")
        return self.values.get(name)

    @property
    def metrics_port(self) -> int:
        port = self.values.get("METRICS_PORT")
        return DEFAULT_METRICS_PORTS.get(self.stage, 0) if port is None else port


def load(stage: str, environ: Mapping[str, str] | None = None, *, required: bool = True) -> Settings:
    """Read the settings `stage` uses; raise SettingsError naming every missing or invalid one."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for setting in SETTINGS:
        if stage in STAGES and stage not in setting.stages:
            continue
        raw = env.get(setting.name, "").strip() or setting.default
        if raw is None:
            if setting.required and required:
                problems.append(f"{setting.name} is not set ({setting.doc})")
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            problems.append(f"{setting.name}={raw!r} is invalid: {exc}")
    if problems:
        raise SettingsError(problems)
    return Settings(stage=stage, values=values)


def markdown_table() -> str:
    """The settings table of docs/contract.md §7 (tests/test_docs.py keeps the two equal)."""

    def stages(setting: Setting) -> str:
        if setting.stages == ALL:
            return "all"
        if not setting.stages:
            return "`streams apply`"
        return ", ".join(stage for stage in STAGES if stage in setting.stages)

    def default(setting: Setting) -> str:
        if setting.name == "METRICS_PORT":
            return ", ".join(f"{stage} {port}" for stage, port in DEFAULT_METRICS_PORTS.items())
        if setting.default is not None:
            return f"`{setting.default}`"
        return "required" if setting.required else "—"

    rows = ["| setting | default | read by | meaning |", "|---|---|---|---|"]
    for setting in SETTINGS:
        doc = setting.doc.replace("|", "\\|")
        rows.append(f"| `{setting.name}` | {default(setting)} | {stages(setting)} | {doc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m botburrow.settings --markdown
    import sys

    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python -m botburrow.settings --markdown")
    sys.stdout.write(markdown_table())
