"""A provider-neutral conversation, and the model seam the agent loop talks to.

The loop appends entries; each provider adapter turns the transcript into its own message format.
Keeping one neutral form means the loop cannot produce a sequence that is valid for one provider
and broken for the other: a tool call is always answered by a result with the same id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

# Here, not in `providers`, so the gateway resolves endpoints without importing the `anthropic` package
# (2.5 s of CPU, which a restarting runner would pay before it is ready).
ANTHROPIC_DEFAULT_URL = "https://api.anthropic.com"
# Without a real key, local mode and tests talk to the scripted LLM, which accepts any key.
LOCAL_KEY = "local-mode-no-key"


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    # Parsed arguments, or the raw text when the model sent JSON that does not parse.
    arguments: dict[str, Any] | str


def parse_arguments(raw: Any) -> dict[str, Any] | str:
    """A tool call's arguments as a provider sent them (an object, or JSON text) -> `ToolCall.arguments`."""
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw or "{}")
    except ValueError:
        return str(raw)
    return parsed if isinstance(parsed, dict) else str(raw)


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class UserText:
    text: str


@dataclass(frozen=True)
class AssistantTurn:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass(frozen=True)
class ToolResults:
    results: list[ToolResult]


Entry = UserText | AssistantTurn | ToolResults


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ModelReply:
    text: str
    tool_calls: list[ToolCall]
    stop_reason: str | None
    input_tokens: int  # the uncached input, as Anthropic reports it (OpenAI's prompt_tokens less cached_tokens)
    output_tokens: int
    model: str
    cache_write_tokens: int = 0  # input written to the provider's prompt cache (Anthropic only bills these)
    cache_read_tokens: int = 0  # input read from it

    @property
    def prompt_tokens(self) -> int:
        """Every input token the model read, cached or not (what the token budget counts)."""
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens


class ModelError(Exception):
    """A model call failed. `retry_after_s` is set when trying again may help (429, 529, 5xx)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after_s = status, retry_after_s


class Model(Protocol):
    provider: str
    model: str

    async def complete(self, system: str, transcript: list[Entry], tools: list[ToolSpec]) -> ModelReply: ...

    async def aclose(self) -> None: ...
