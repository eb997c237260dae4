"""OpenCode headless (`opencode run --format json`), contract §4.

Its whole configuration is one JSON file (`OPENCODE_CONFIG`): the gateway as an OpenAI-compatible or
Anthropic provider, the agent's prompt, permissions (shell and edits denied unless shell is enabled),
and the MCP relays. Failure test: a non-zero exit, an `error` event, a last `step_finish` whose reason
is not `stop`, or no text after the last tool call (an auto-rejected permission ends the run that way,
with exit 0).
"""

from __future__ import annotations

from typing import Any

from services.runner.executors.base import PARSE_CUT_CHARS, CliJob, Invocation, Parsed, ToolEvent
from services.runner.executors.process import Completed
from services.runner.executors.streams import json_lines, result_text
from services.runner.executors.text import to_json

# The bundled providers: any other `npm` package is installed at start-up (20 s+ offline, then fails).
PROVIDERS = {"anthropic": ("anthropic", {}), "openai": ("gw", {"npm": "@ai-sdk/openai-compatible"})}
AGENT_ID = "runner"


def provider_of(job: CliJob) -> tuple[str, dict[str, str]]:
    return PROVIDERS["anthropic" if job.provider == "anthropic" else "openai"]


class OpenCode:
    name = "opencode"
    binary_name = "opencode"
    housekeeping_models = ()  # its `small_model` (titles) is the config's model, and titles are off

    def config(self, job: CliJob) -> dict[str, Any]:
        model = job.model
        provider_id, package = provider_of(job)
        provider: dict[str, Any] = {**package, "options": {
            "baseURL": f"{job.gateway.base_url}/v1", "apiKey": "{env:LLM_TOKEN}",
            "timeout": int(min(job.timeout_s, 120) * 1000)}}
        provider["models"] = {model: {"tool_call": True, "limit": {"context": 128000, "output": 8192}}}
        allow = "allow" if job.shell_enabled else "deny"
        permission = {"edit": allow, "bash": allow, "webfetch": "deny"}
        return {
            "$schema": "https://opencode.ai/config.json", "autoupdate": False, "share": "disabled",
            "model": f"{provider_id}/{model}", "small_model": f"{provider_id}/{model}",
            "provider": {provider_id: provider}, "enabled_providers": [provider_id],
            "mcp": {e.name: {"type": "local", "command": [e.command, *e.args], "enabled": True,
                             "environment": dict(e.env)} for e in job.mcp},
            "agent": {AGENT_ID: {"mode": "primary", "prompt": job.system, "permission": permission,
                                 "steps": job.max_turns},
                      # No title call: it would spend tokens on a session nobody sees.
                      "title": {"disable": True}},
            "permission": permission,
        }

    def invocation(self, job: CliJob) -> Invocation:
        config = job.write("opencode.json", to_json(self.config(job)))
        argv = [job.binary, "run", "--format", "json", "--agent", AGENT_ID, "-m",
                f"{provider_of(job)[0]}/{job.model}", job.task]
        env = {**job.base_env(), "OPENCODE_CONFIG": str(config), "LLM_TOKEN": job.gateway.token,
               "OPENCODE_DISABLE_SHARE": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1",
               "OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
               "OPENCODE_DISABLE_PROJECT_CONFIG": "1", "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
               "OPENCODE_DISABLE_CLAUDE_CODE": "1", "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1"}
        return Invocation(argv, env)

    def parse(self, job: CliJob, done: Completed) -> Parsed:
        parsed = Parsed()
        text: list[str] = []
        finish_reason: str | None = None
        for event in json_lines(done.stdout):
            kind = event.get("type")
            part = event.get("part") or {}
            if kind == "text":
                text.append(str(part.get("text", "")))
            elif kind == "tool_use":
                text = []  # the answer is the text after the last tool call
                parsed.tools.append(self._tool(part))
            elif kind == "step_finish":
                finish_reason = part.get("reason")
            elif kind == "error":
                error = event.get("error") or {}
                message = (error.get("data") or {}).get("message") or error.get("name") or error
                parsed.error = f"error: {str(message)[:PARSE_CUT_CHARS]}"
        parsed.text = "".join(text).strip()
        if parsed.error is None and finish_reason is None:
            parsed.error = "no step_finish event in the output (crashed or killed)"
        elif parsed.error is None and finish_reason != "stop":
            parsed.error = f"the last step ended with {finish_reason!r}, not 'stop'"
        return parsed

    @staticmethod
    def _tool(part: dict[str, Any]) -> ToolEvent:
        state = part.get("state") or {}
        name = str(part.get("tool", ""))
        failed = state.get("status") == "error"
        return ToolEvent(str(part.get("callID", "")), name, state.get("input"),
                         result=str(state.get("error", "")) if failed else result_text(state.get("output")),
                         is_error=failed)
