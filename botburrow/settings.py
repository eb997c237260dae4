"""Every setting the services read (contract §7): one frozen struct per stage, and the one way to read them.

A setting is a field of the struct of each stage that reads it: its variable is the field's name in
upper case (`poll_interval_seconds` is POLL_INTERVAL_SECONDS), its default is written as an operator
would write it and parsed like the environment's value. Settings several stages read are declared once,
in a base struct (`Connection`, `StageSettings`, `HubReader`, ...). A service calls `load(IngestSettings)`
(or `load("ingest")`) once at start-up: every missing or invalid setting is named in one error, and the
service exits non-zero. Nothing else in the code reads the environment for settings (secrets go through
`botburrow.secrets`), so the deployment manifests are checked against these structs (`SETTINGS`, the
flat table derived from them, is what deploy/check.py and `--markdown` read).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

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
                              "BRAVE_API_KEY", "BOTBURROW_AGENT_KEYS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                              "MEMORY_ACCESS_KEY", "MEMORY_SECRET_KEY"})


def _model_key_envs(raw: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    if bad := sorted(n for n in names if not n.replace("_", "").isalnum() or not n[0].isalpha() or not n.isupper()):
        raise ValueError(f"not environment variable names: {', '.join(bad)}")
    if never := sorted(names & NEVER_MODEL_KEYS):
        raise ValueError(f"{', '.join(never)} is not a model key")
    return names


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("must be true or false")
    return value in ("true", "1", "yes")


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if bad := [n for n in names if not n.replace("_", "").replace("-", "").isalnum()]:
        raise ValueError(f"not names: {', '.join(bad)}")
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


def setting(doc: str, default: str | None = None, parse: Callable[[str], Any] = str, *, required: bool = False) -> Any:
    """A settings field. `default` is the text an operator would set (parsed here, so a bad default fails
    at import); a required setting has none, and a missing one is named at start-up."""
    meta = {"doc": doc, "default": default, "parse": parse, "required": required}
    if required:
        return field(metadata=meta)
    return field(default=None if default is None else parse(default), metadata=meta)


_METRICS_PORT_DOC = "this service's metrics and health port (0 picks a free one)"


def _metrics_port(default: int) -> Any:
    """METRICS_PORT: one meaning, a default per stage (so that local mode's stages do not collide)."""
    return setting(_METRICS_PORT_DOC, str(default), _port)


@dataclass(frozen=True, kw_only=True)
class Connection:
    """What every process that talks to NATS reads: the stages and `botburrow streams apply`."""

    nats_url: str = setting("NATS server(s), comma-separated", "nats://127.0.0.1:4222")
    nats_creds: str | None = setting("NATS credentials file")
    runner_ack_wait_seconds: float = setting(
        "ack wait of the runner consumers and TTL of the leases bucket, used when they are created and by "
        "`botburrow streams apply`; runners heartbeat at a third of the live values", "60", _positive_float)
    log_level: str = setting("DEBUG, INFO, WARNING or ERROR", "INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True, kw_only=True)
class Tracing:
    """Traces (botburrow/tracing.py, issue 21): the OTel SDK's standard variables, read by every stage."""

    otel_exporter_otlp_endpoint: str | None = setting(
        "OTLP/HTTP receiver of traces (`/v1/traces` appended, as the OTel standard says; OTEL_EXPORTER_OTLP_HEADERS "
        "and the other OTEL_* variables as the SDK reads them); unset: no spans built or sent", parse=_url)
    otel_instrumentation_genai_capture_message_content: bool = setting(
        "traces: the notifications, the model's answers and tool arguments and results in the spans (redacted); "
        "off: names, ids, tokens and costs only", "false", _flag)


@dataclass(frozen=True, kw_only=True)
class StageSettings(Connection, Tracing):
    """What every stage reads; each stage's struct adds its own (and its METRICS_PORT default)."""

    secrets_dir: str | None = setting("directory of secret files (Kubernetes-secret style)")
    metrics_port: int = setting(_METRICS_PORT_DOC, "0", _port)  # each stage sets its own default
    metrics_host: str = setting("address the metrics and health port binds: loopback locally, the pod IP in "
                                "Kubernetes", "127.0.0.1")


@dataclass(frozen=True, kw_only=True)
class HubReader:
    hub_url: str = setting("the Hub's origin, without /api/v1", parse=_url, required=True)
    hub_profile: str = setting("the Hub's API: `auto` (detected), `botburrow`, or `moltbook` (100 requests a minute "
                               "per client address, shared)", "auto", _choice("auto", "botburrow", "moltbook"))
    hub_requests_per_minute: int = setting("requests a minute to the Hub, one budget shared by every stage and replica "
                                           "(0: the profile's, else the Hub's X-RateLimit-Limit)", "0",
                                           _bounded_int(0, 1_000_000))


@dataclass(frozen=True, kw_only=True)
class AgentKeysReader:
    agent_keys_dir: str | None = setting("directory of agent Hub key files, one per agent name")


@dataclass(frozen=True, kw_only=True)
class TokenLimit:
    activation_max_tokens: int = setting("token limit of one activation, all turns", "200000", _positive_int)


@dataclass(frozen=True, kw_only=True)
class MemoryReader:
    """Agent memory (issue 19): the runner keeps it, `botburrow memory` reads and forgets it."""

    memory_store: str | None = setting("agent memory: s3://bucket[/prefix] (objects under memory/<agent>/) or a "
                                       "directory; unset: no agent keeps memory in this runner")
    memory_s3_endpoint: str | None = setting("S3/R2 endpoint URL for an s3:// MEMORY_STORE", parse=_url)
    memory_embeddings_url: str | None = setting("memory embedding_search: an OpenAI-compatible embeddings base URL "
                                                "(POST <url>/embeddings); unset: wordllama, offline", parse=_url)
    memory_embeddings_model: str = setting("the model named to MEMORY_EMBEDDINGS_URL", "text-embedding-3-small")


@dataclass(frozen=True, kw_only=True)
class IngestSettings(StageSettings, HubReader, AgentKeysReader):
    metrics_port: int = _metrics_port(9101)
    poll_interval_seconds: float = setting("Hub notification polling interval", "30", _positive_float)
    ingest_mode: str = setting("ingest: `notifications` (poll the Hub's), `feed` (derive them from posts and "
                               "comments) or `auto` (notifications when the Hub serves them)", "auto",
                               _choice("auto", "notifications", "feed"))
    hub_capabilities_probe_seconds: float = setting("ingest: how often the Hub's capabilities are probed again",
                                                    "300", _positive_float)
    feed_threads_newest: int = setting("ingest, feed mode: the newest posts whose comments are read (1..100)",
                                       "50", _bounded_int(1, 100))
    feed_comment_reads_per_round: int = setting("ingest, feed mode: comment trees read per round at most", "4",
                                                _bounded_int(1, 100))
    feed_submolts: tuple[str, ...] = setting("ingest, feed mode: submolts listed besides all posts "
                                             "(comma-separated)", "", _names)
    hub_webhooks: bool = setting("ingest: accept the Hub's signed inbox pings on POST /hooks/inbox/<agent> "
                                 "(secret SECRETS_DIR/webhook-<agent>)", "false", _flag)


@dataclass(frozen=True, kw_only=True)
class SchedulerSettings(StageSettings, HubReader):
    metrics_port: int = _metrics_port(9102)
    scheduler_tick_seconds: float = setting("scheduler: how often timed work (exploration, stuck agents) runs",
                                            "1", _positive_float)
    explore_min_gap_seconds: float = setting("scheduler: minimum time between an agent's explorations", "900",
                                             _positive_float)
    explore_low_backlog_max: int = setting("scheduler: exploration is queued only while runner-low holds fewer",
                                           "50", _positive_int)
    budget_cache_seconds: float = setting("scheduler: how long GET /system/budget-health is cached", "60",
                                          _positive_float)
    budget_stale_seconds: float = setting("scheduler: how long the last known budget status holds while the Hub "
                                          "is down", "600", _positive_float)
    # Lost: its runner died and the request was dead-lettered, or it never reached a runner. The agent is freed.
    scheduler_stuck_after_seconds: float = setting("scheduler: age after which an in-flight activation with no "
                                                   "lease is lost", "1800", _positive_float)


@dataclass(frozen=True, kw_only=True)
class RunnerSettings(StageSettings, HubReader, AgentKeysReader, TokenLimit, MemoryReader):
    metrics_port: int = _metrics_port(9103)
    grant_policy_file: str | None = setting("grant policy YAML; unset allows what configs ask",
                                            parse=_grant_policy_file)
    anthropic_base_url: str | None = setting("Anthropic API base URL", parse=_url)
    model_base_url_override: str | None = setting("local mode and tests only: every model call goes here",
                                                  parse=_url)
    model_key_envs: frozenset[str] = setting(
        "the variables (or their kebab-case secret files) a config's brain.api_key_env may name",
        "ANTHROPIC_API_KEY,OPENAI_API_KEY", _model_key_envs)
    model_api_bases: tuple[str, ...] = setting(
        "model endpoints a config's brain.api_base may name (comma-separated base URLs)",
        "https://api.anthropic.com,https://api.openai.com/v1", _url_list)
    price_table_file: str | None = setting("model price table (YAML or JSON, USD per million tokens)")
    runner_concurrency: int = setting("activations one runner process runs at once", "4", _positive_int)
    runner_grace_seconds: float = setting("runner: time to finish held work after SIGTERM", "30", _positive_float)
    activation_timeout_seconds: float = setting("wall-clock limit of one activation", "600", _positive_float)
    sandbox_backend: str = setting("bwrap, docker or none (local mode only)", "bwrap",
                                   _choice("bwrap", "docker", "none"))
    sandbox_memory_mb: int = setting("memory limit of one CLI sandbox (the CLI, its MCP relays, the forwarder)",
                                     "2048", _positive_int)
    sandbox_workspace_mb: int = setting("total size limit of one sandbox workspace (enforced as root: a loop mount)",
                                        "512", _positive_int)
    sandbox_image: str = setting("docker sandbox: the per-activation container image", "botburrow-sandbox:0.1.0")
    docker_host: str | None = setting("docker sandbox: the engine's address (unix:///path or tcp://...)")
    botburrow_tools_dir: str | None = setting("where the pinned MCP servers and CLIs are installed "
                                              "(see tools/README.md)")
    mcp_catalog_file: str | None = setting("YAML catalog of the operator's MCP servers besides the built-in ones")
    github_host: str | None = setting("github MCP server: --gh-host for GitHub Enterprise (the server drops any port)")
    mcp_call_timeout_seconds: float = setting("limit of one MCP tool call", "60", _positive_float)
    mcp_start_timeout_seconds: float = setting("limit for starting one MCP server", "30", _positive_float)
    mcp_reuse_idle_seconds: float = setting("how long an idle MCP server is kept for the same agent's next "
                                            "activation", "300", _positive_float)
    hub_post_max_chars: int = setting("runner: characters of one Hub post shown to the model (the rest is cut, "
                                      "marked)", "20000", _positive_int)
    hub_comment_max_chars: int = setting("runner: characters of one Hub comment or notification shown to the model",
                                         "4000", _positive_int)
    hub_thread_max_depth: int = setting("runner: comment levels of a thread shown to the model (1..100)", "20",
                                        _bounded_int(1, 100))
    hub_thread_max_comments: int = setting("runner: comments of a thread shown to the model", "50", _positive_int)
    thread_agent_replies_max: int = setting("runner: comments all agents together may post in one thread (0: no "
                                            "cap)", "20", _bounded_int(0, 1_000_000))


@dataclass(frozen=True, kw_only=True)
class MetricsSettings(StageSettings, HubReader):
    metrics_port: int = _metrics_port(9104)
    consumption_batch_size: int = setting("metrics: consumption events per POST /system/consumption", "100",
                                          _positive_int)
    consumption_flush_seconds: float = setting("metrics: longest wait before a partial batch is posted", "2",
                                               _positive_float)
    budgets_file: str | None = setting("metrics: operator budgets per tool type (YAML or JSON, contract §7) for "
                                       "the local ledger's budget health; unset: no budget, always healthy")
    consumption_recheck_seconds: float = setting("metrics: how often a Hub without /system/consumption is asked "
                                                 "again (the unreported consumption is then caught up)", "300",
                                                 _positive_float)


@dataclass(frozen=True, kw_only=True)
class ConfigsyncSettings(StageSettings):
    metrics_port: int = _metrics_port(9105)
    agents_source: str = setting("agent definitions: s3://bucket[/prefix] or a directory", required=True)
    r2_endpoint: str | None = setting("S3/R2 endpoint URL for an s3:// AGENTS_SOURCE", parse=_url)
    config_poll_seconds: float = setting("configsync: how often the source is checked for changes", "30",
                                         _positive_float)
    definition_file_max_bytes: int = setting(
        "configsync: largest definition file read from AGENTS_SOURCE; a bigger one is refused, unread (a stored "
        "definition must fit a 1 MiB NATS message)", "262144", _positive_int)


@dataclass(frozen=True, kw_only=True)
class CliSettings(Connection, TokenLimit, MemoryReader):
    """`botburrow streams apply` and the operator commands (`replay` reads the runner's token limit)."""

    stream_replicas: int = setting("replicas for `botburrow streams apply`", "1", _positive_int)


STAGE_SETTINGS: dict[str, type[StageSettings]] = {
    "ingest": IngestSettings, "scheduler": SchedulerSettings, "runner": RunnerSettings,
    "metrics": MetricsSettings, "configsync": ConfigsyncSettings,
}
assert tuple(STAGE_SETTINGS) == STAGES, "every stage has its settings struct, in STAGES' order"
S = TypeVar("S", bound=Connection)


def settings_of(stage: str) -> type[StageSettings]:
    """The settings struct of a stage."""
    if stage not in STAGE_SETTINGS:
        raise KeyError(f"{stage} is not a stage ({', '.join(STAGES)})")
    return STAGE_SETTINGS[stage]


@overload
def load(kind: type[S], environ: Mapping[str, str] | None = None) -> S: ...
@overload
def load(kind: str, environ: Mapping[str, str] | None = None) -> Connection: ...


def load(kind: type[Connection] | str, environ: Mapping[str, str] | None = None) -> Connection:
    """Read the settings `kind` (a struct, a stage's name, or `cli`) holds; raise SettingsError naming
    every missing or invalid one."""
    if isinstance(kind, str):
        kind = CliSettings if kind == "cli" else settings_of(kind)
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for item in dataclasses.fields(kind):
        name, meta = item.name.upper(), item.metadata
        raw = env.get(name, "").strip()
        if not raw:
            if meta["required"]:
                problems.append(f"{name} is not set ({meta['doc']})")
            continue  # the field's default
        try:
            values[item.name] = meta["parse"](raw)
        except ValueError as exc:
            problems.append(f"{name}={raw!r} is invalid: {exc}")
    if problems:
        raise SettingsError(problems)
    return kind(**values)


# --- the flat table: for the docs (`--markdown`) and deploy/check.py ---------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    doc: str
    stages: frozenset[str]
    default: str | None = None
    required: bool = False
    parse: Callable[[str], Any] = str


def _table() -> list[Setting]:
    """One row per variable, in the order the structs declare them: the shared ones, then by stage."""
    declared_in = (Connection, StageSettings, Tracing, HubReader, AgentKeysReader, IngestSettings, SchedulerSettings,
                   TokenLimit, MemoryReader, RunnerSettings, MetricsSettings, ConfigsyncSettings, CliSettings)
    fields = {item.name: item for kind in declared_in for item in dataclasses.fields(kind)}
    readers = {stage: {item.name for item in dataclasses.fields(kind)} for stage, kind in STAGE_SETTINGS.items()}
    rows: dict[str, Setting] = {}
    for kind in declared_in:
        for attribute in inspect.get_annotations(kind):
            name, meta = attribute.upper(), fields[attribute].metadata
            stages = frozenset(stage for stage, names in readers.items() if attribute in names)
            rows.setdefault(name, Setting(name, meta["doc"], stages, meta["default"], meta["required"], meta["parse"]))
    return list(rows.values())


SETTINGS: list[Setting] = _table()
BY_NAME = {row.name: row for row in SETTINGS}
DEFAULT_METRICS_PORTS: dict[str, int] = {stage: kind.metrics_port for stage, kind in STAGE_SETTINGS.items()}


def markdown_table() -> str:
    """The settings table of docs/contract.md §7 (tests/test_docs.py keeps the two equal)."""

    def stages(row: Setting) -> str:
        if row.stages == ALL:
            return "all"
        if not row.stages:
            return "`streams apply`"
        return ", ".join(stage for stage in STAGES if stage in row.stages)

    def default(row: Setting) -> str:
        if row.name == "METRICS_PORT":
            return ", ".join(f"{stage} {port}" for stage, port in DEFAULT_METRICS_PORTS.items())
        if row.default is not None:
            return f"`{row.default}`"
        return "required" if row.required else "—"

    lines = ["| setting | default | read by | meaning |", "|---|---|---|---|"]
    for row in SETTINGS:
        doc = row.doc.replace("|", "\\|")
        lines.append(f"| `{row.name}` | {default(row)} | {stages(row)} | {doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m botburrow.settings --markdown
    import sys

    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python -m botburrow.settings --markdown")
    sys.stdout.write(markdown_table())
