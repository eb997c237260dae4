"""Goose headless (`goose run -q --no-session --no-profile --output-format stream-json`), contract §4.

Failure test (Goose exits 0 on server errors and timeouts, with the error as answer text and 0
tokens): a non-zero exit, an `error` event or content item, no `complete` event, `complete` with 0
tokens, or an answer starting "Ran into this error" / "Network error".
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from services.runner.executors.base import PARSE_CUT_CHARS, CliJob, Invocation, Parsed, ToolEvent
from services.runner.executors.process import Completed
from services.runner.executors.streams import json_lines, result_text

ERROR_PREFIXES = ("Ran into this error", "Network error")
EXTENSION_FAILED = re.compile(r"Failed to start extension '([^']*)' \((.*?)\), continuing without it")


class Goose:
    name = "goose"
    binary_name = "goose"
    housekeeping_models = ()  # session naming (its only side call) is off: GOOSE_DISABLE_SESSION_NAMING

    def invocation(self, job: CliJob) -> Invocation:
        argv = [job.binary, "run", "-q", "--no-session", "--no-profile", "--output-format", "stream-json",
                "--max-turns", str(job.max_turns), "--system", job.system]
        if job.shell_enabled:
            argv += ["--with-builtin", "developer"]
        for entry in job.mcp:
            # The relay command only: it holds no credential, so nothing sensitive lands in argv.
            argv += ["--with-extension", f"{entry.name}:{shlex.join([entry.command, *entry.args])}"]
        argv += ["-t", job.task]
        timeout_s = str(int(min(job.timeout_s, 120)))
        env = {**job.base_env(), "GOOSE_DISABLE_KEYRING": "1", "GOOSE_DISABLE_SESSION_NAMING": "true",
               "GOOSE_TELEMETRY_OFF": "1", "GOOSE_MODE": "auto", "GOOSE_MODEL": job.model,
               "GOOSE_CLI_MIN_PRIORITY": "0.0"}
        if job.provider == "anthropic":
            env |= {"GOOSE_PROVIDER": "anthropic", "ANTHROPIC_HOST": job.gateway.base_url,
                    "ANTHROPIC_API_KEY": job.gateway.token, "ANTHROPIC_TIMEOUT": timeout_s,
                    "GOOSE_STREAM_TIMEOUT": timeout_s}
        else:
            host, _, tag = job.gateway.base_url.rpartition("/")
            env |= {"GOOSE_PROVIDER": "openai", "OPENAI_HOST": host, "OPENAI_BASE_PATH": f"{tag}/v1/chat/completions",
                    "OPENAI_API_KEY": job.gateway.token, "OPENAI_TIMEOUT": timeout_s, "GOOSE_STREAM_TIMEOUT": timeout_s}
        return Invocation(argv, env)

    def parse(self, job: CliJob, done: Completed) -> Parsed:
        parsed = Parsed()
        texts: dict[str, list[str]] = {}  # streamed text arrives as several events with one message id
        last_id = ""
        pending: dict[str, ToolEvent] = {}
        complete: dict[str, Any] | None = None
        for event in json_lines(done.stdout):
            kind = event.get("type")
            if kind == "message":
                message = event.get("message") or {}
                if message.get("role", "assistant") == "assistant":
                    last_id = self._message(message, texts, pending, last_id, parsed)
                else:
                    self._responses(message, pending, parsed)
            elif kind == "complete":
                complete = event
            elif kind == "error":
                parsed.error = f"error: {str(event.get('error'))[:PARSE_CUT_CHARS]}"
        parsed.tools += pending.values()
        parsed.text = "".join(texts.get(last_id, [])).strip()
        if parsed.error is None:
            parsed.error = self._failure(parsed.text, complete)
        if failed := EXTENSION_FAILED.search(done.stderr.decode("utf-8", "replace")):
            # Goose carries on without an extension that did not start (or not within its start-up window,
            # about 10 s): the agent would act without the MCP tools its grants give it. The root cause
            # of whatever else went wrong (a call to the missing tool, the model's reaction to that).
            parsed.error = f"MCP server {failed.group(1)!r} did not start: {failed.group(2)[:PARSE_CUT_CHARS]}"
        return parsed

    @staticmethod
    def _message(message: dict[str, Any], texts: dict[str, list[str]], pending: dict[str, ToolEvent],
                 last_id: str, parsed: Parsed) -> str:
        message_id = str(message.get("id") or f"m{len(texts)}")
        for item in message.get("content") or []:
            kind = item.get("type")
            if kind == "text":
                texts.setdefault(message_id, []).append(item.get("text", ""))
                last_id = message_id
            elif kind == "toolRequest":
                call = (item.get("toolCall") or {}).get("value") or {}
                name = str(call.get("name", ""))
                server, _, tool = name.partition("__")
                pending[str(item.get("id"))] = ToolEvent(str(item.get("id", "")), name, call.get("arguments"),
                                                         server=server if tool else "")
                last_id = ""  # text before a tool call is not the final answer
            elif kind == "error":
                parsed.error = f"error: {str(item.get('message', item))[:PARSE_CUT_CHARS]}"
        return last_id

    @staticmethod
    def _responses(message: dict[str, Any], pending: dict[str, ToolEvent], parsed: Parsed) -> None:
        for item in message.get("content") or []:
            if item.get("type") != "toolResponse":
                continue
            event = pending.pop(str(item.get("id")), None)
            if event is None:
                continue
            result = item.get("toolResult") or {}
            value = result.get("value") or {}
            event.result = result_text(value.get("content") if isinstance(value, dict) else value) or \
                str(result.get("error", ""))
            event.is_error = bool(value.get("isError")) if isinstance(value, dict) else False
            event.is_error = event.is_error or result.get("status") == "error"
            parsed.tools.append(event)

    @staticmethod
    def _failure(text: str, complete: dict[str, Any] | None) -> str | None:
        if text.startswith(ERROR_PREFIXES):
            return text[:PARSE_CUT_CHARS]
        if complete is None:
            return "no complete event in the output (crashed or killed)"
        if not int(complete.get("total_tokens") or 0):
            return "the run used no tokens (the model was never reached)"
        return None
