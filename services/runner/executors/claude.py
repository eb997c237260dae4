"""Claude Code headless (`claude -p ... --output-format stream-json --verbose`), contract §4.

Failure test (exit codes lie): no `result` line, `is_error` (its `subtype` may still say success), or a
non-zero exit.
"""

from __future__ import annotations

from services.runner.executors.base import PARSE_CUT_CHARS, CliJob, Invocation, Parsed, ToolEvent
from services.runner.executors.process import Completed
from services.runner.executors.streams import json_lines, result_text
from services.runner.executors.text import to_json

SHELL_TOOLS = "Bash,Edit,Read,Write"


class ClaudeCode:
    name = "claude-code"
    binary_name = "claude"
    # Its "small fast model" (ANTHROPIC_SMALL_FAST_MODEL, else ANTHROPIC_DEFAULT_HAIKU_MODEL, else Haiku 4.5)
    # when it takes its endpoint for Anthropic's own; behind the gateway 2.1.197 uses the main model.
    housekeeping_models = ("claude-haiku-4-5-20251001", "claude-haiku-4-5")

    def invocation(self, job: CliJob) -> Invocation:
        persona = job.write("persona.md", job.system)
        servers = {e.name: {"type": "stdio", "command": e.command, "args": list(e.args), "env": dict(e.env)}
                   for e in job.mcp}
        mcp = job.write("mcp.json", to_json({"mcpServers": servers}))
        allowed = [f"mcp__{e.name}" for e in job.mcp] + (SHELL_TOOLS.split(",") if job.shell_enabled else [])
        argv = [job.binary, "-p", job.task, "--output-format", "stream-json", "--verbose",
                "--max-turns", str(job.max_turns), "--model", job.model,
                # --bare: no CLAUDE.md, hooks, plugins or keychain; auth only from ANTHROPIC_API_KEY.
                "--bare", "--append-system-prompt-file", str(persona),
                "--mcp-config", str(mcp), "--strict-mcp-config", "--no-session-persistence",
                # Built-in tools: none unless shell is enabled (its shell and edit tools are then the only ones).
                "--tools", SHELL_TOOLS if job.shell_enabled else ""]
        if allowed:
            argv += ["--allowedTools", *allowed]
        env = {**job.base_env(),
               "ANTHROPIC_BASE_URL": job.gateway.base_url, "ANTHROPIC_API_KEY": job.gateway.token,
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
               "CLAUDE_CODE_MAX_RETRIES": "2", "API_TIMEOUT_MS": str(int(min(job.timeout_s, 120) * 1000)),
               "ENABLE_TOOL_SEARCH": "false", "IS_SANDBOX": "1",
               # -p otherwise starts the first turn before stdio MCP servers have connected.
               "MCP_CONNECTION_NONBLOCKING": "false", "MCP_TIMEOUT": "30000", "MCP_CONNECT_TIMEOUT_MS": "30000"}
        return Invocation(argv, env)

    def parse(self, job: CliJob, done: Completed) -> Parsed:
        parsed = Parsed()
        pending: dict[str, ToolEvent] = {}
        result: dict | None = None
        for event in json_lines(done.stdout):
            kind = event.get("type")
            content = (event.get("message") or {}).get("content")
            if kind == "assistant" and isinstance(content, list):
                for block in content:
                    if block.get("type") == "tool_use":
                        server, _, tool = str(block.get("name", "")).removeprefix("mcp__").partition("__")
                        pending[block.get("id", "")] = ToolEvent(
                            block.get("id", ""), block.get("name", ""), block.get("input"),
                            server=server if tool else "")
            elif kind == "user" and isinstance(content, list):
                for block in content:
                    tool_event = pending.pop(block.get("tool_use_id", ""), None)
                    if block.get("type") == "tool_result" and tool_event is not None:
                        tool_event.result = result_text(block.get("content"))
                        tool_event.is_error = bool(block.get("is_error"))
                        parsed.tools.append(tool_event)
            elif kind == "result":
                result = event
        parsed.tools += pending.values()  # calls the run ended on, unanswered
        if result is None:
            parsed.error = "no result line in the output (crashed or killed)"
        elif result.get("is_error"):
            parsed.error = f"{result.get('subtype', 'error')}: {str(result.get('result', ''))[:PARSE_CUT_CHARS]}"
        else:
            parsed.text = str(result.get("result") or "")
        return parsed
