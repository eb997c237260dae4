"""Aider headless (`aider --message ...`), contract §4. Aider has no MCP upstream: an aider agent runs
without MCP tools (logged once per activation), and the runner still posts its answer.

Aider exits 0 after fatal API errors, and its stdout is prose: the answer is the gateway's record of
the last model answer, and success is an analytics `message_send` event with no `litellm.*Error`
on stdout. With shell disabled it runs in `ask` mode with `--dry-run`: it answers and edits nothing.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from services.runner.executors.base import PARSE_CUT_CHARS, CliJob, Invocation, Parsed
from services.runner.executors.process import Completed
from services.runner.executors.streams import json_lines
from services.runner.executors.text import to_json

log = logging.getLogger(__name__)

LITELLM_ERROR = re.compile(r"litellm\.\w*(Error|Exception)[^\n]*")
# Aider wraps a long error message over lines, then adds its own advice: the message is what comes before.
ERROR_ENDS = ("The API provider", "Retrying in", "https://")
ERROR_MAX_LINES = 3
QUIET_FLAGS = ["--yes-always", "--no-git", "--no-check-update", "--no-analytics", "--no-show-model-warnings",
               "--no-pretty", "--no-stream", "--no-fancy-input", "--no-detect-urls", "--no-auto-lint",
               "--no-auto-test", "--map-tokens", "0", "--no-show-release-notes", "--no-suggest-shell-commands"]


def outputs(job: CliJob) -> Path:
    return job.workspace / ".botburrow-aider"


class Aider:
    name = "aider"
    binary_name = "aider"
    housekeeping_models = ()  # its weak model (summaries) is the main one: our settings entry names none

    def invocation(self, job: CliJob) -> Invocation:
        if job.mcp:
            log.warning("aider has no MCP support: its MCP servers are not offered",
                        extra={"activation_id": job.request.activation_id, "servers": [e.name for e in job.mcp]})
        prefix = "anthropic" if job.provider == "anthropic" else "openai"
        model = f"{prefix}/{job.model}"
        edit_format = "diff" if job.shell_enabled else "ask"
        settings = job.write("settings.yml", to_json([{
            "name": model, "edit_format": edit_format, "use_repo_map": False,
            "system_prompt_prefix": job.system + "\n\n"}]))
        metadata = job.write("metadata.json", to_json({model: {
            "max_input_tokens": 128000, "max_output_tokens": 8192, "input_cost_per_token": 0,
            "output_cost_per_token": 0, "litellm_provider": prefix, "mode": "chat"}}))
        run = outputs(job)  # writable in a sandbox, where the run directory is read-only
        run.mkdir(exist_ok=True)
        argv = [job.binary, "--model", model, "--edit-format", edit_format, "--message", job.task,
                *QUIET_FLAGS, "--timeout", str(int(min(job.timeout_s, 120))),
                "--model-settings-file", str(settings), "--model-metadata-file", str(metadata),
                "--analytics-log", str(run / "aider.jsonl"), "--llm-history-file", str(run / "llm.txt"),
                "--chat-history-file", str(run / "chat.md"), "--input-history-file", str(run / "input.hist")]
        if not job.shell_enabled:
            argv.append("--dry-run")
        env = {**job.base_env(), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        if prefix == "anthropic":
            env |= {"ANTHROPIC_API_BASE": job.gateway.base_url, "ANTHROPIC_API_KEY": job.gateway.token}
        else:
            env |= {"OPENAI_API_BASE": f"{job.gateway.base_url}/v1", "OPENAI_API_KEY": job.gateway.token}
        return Invocation(argv, env)

    def parse(self, job: CliJob, done: Completed) -> Parsed:
        analytics = outputs(job) / "aider.jsonl"
        events = list(json_lines(analytics.read_bytes())) if analytics.exists() else []
        shutil.rmtree(outputs(job), ignore_errors=True)
        sent = [e for e in events if e.get("event") == "message_send"]
        stdout = done.stdout.decode("utf-8", "replace")
        if error := LITELLM_ERROR.search(stdout):
            return Parsed(error=error_message(stdout[error.start():])[:PARSE_CUT_CHARS])
        if not sent:
            return Parsed(error="no model answer (no message_send event)")
        return Parsed(text=job.gateway.last_text)


def error_message(text: str) -> str:
    """The litellm error message `text` starts with, its wrapped lines joined, without aider's advice."""
    lines: list[str] = []
    for line in text.splitlines()[:ERROR_MAX_LINES]:
        if not line.strip() or (lines and line.startswith(ERROR_ENDS)):
            break
        lines.append(line.strip())
    return " ".join(lines)
