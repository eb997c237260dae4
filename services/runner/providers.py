"""Model adapters: Anthropic Messages (the `anthropic` package) and OpenAI-compatible Chat Completions.

Each turns the neutral transcript into its provider's messages, makes one call without retrying
(the agent loop owns retries, within the activation's deadline) and maps errors to `ModelError`.

Prompt caching (issue 18). The loop hands over a stable prefix (the tools, sorted by name, and the system
prompt with its skills: the same bytes from one activation of an agent to the next) and the variable
transcript after it. Anthropic caches only up to the blocks marked `cache_control` (at most 4 a request):
the last tool (the tool schemas alone, shared even when the skills differ), the system prompt, and the
last block of the conversation (so each turn reads what the previous one wrote). OpenAI-compatible
endpoints cache the longest prefix they saw on their own; the same order is what makes it hit. Usage
is read as each provider reports it and normalised: `input_tokens` is the uncached input (Anthropic's
`input_tokens` already is; OpenAI's `prompt_tokens` include `prompt_tokens_details.cached_tokens`).
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import anthropic
import httpx

from botburrow import tracing
from botburrow.secrets import env_name_to_secret, redact
from schemas.agent import Brain
from services.runner import modelaccess
from services.runner.modelaccess import Endpoint, ModelAccess
from services.runner.transcript import (
    AssistantTurn,
    Entry,
    ModelError,
    ModelReply,
    ToolCall,
    ToolResults,
    ToolSpec,
    UserText,
    parse_arguments,
)

DEFAULT_MAX_TOKENS = 4096
EPHEMERAL = {"type": "ephemeral"}  # Anthropic's cache breakpoint: a 5-minute cache, refreshed on each hit
RETRYABLE_STATUSES = {408, 409, 429, 500, 502, 503, 504, 529}


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process, shared by every model client: building one loads the CA store (about
    50 ms of CPU), and each endpoint and key of a runner gets its own client (seams.ModelClients)."""
    return ssl.create_default_context()


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    try:
        return float(headers.get("retry-after", "")) if headers else None
    except ValueError:
        return None


def anthropic_client(base_url: str, api_key: str, timeout_s: float) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s,
                                    http_client=anthropic.DefaultAsyncHttpxClient(verify=_tls()))


def openai_client(api_key: str, timeout_s: float) -> httpx.AsyncClient:
    # Shared by every activation on the endpoint: as many connections as the Anthropic SDK's pool (1,000), so
    # concurrent calls do not queue in httpx's pool, whose cost grows with the queue (issue 18).
    return httpx.AsyncClient(timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"}, verify=_tls(),
                             limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100))


async def close_client(client: anthropic.AsyncAnthropic | httpx.AsyncClient) -> None:
    await (client.close() if isinstance(client, anthropic.AsyncAnthropic) else client.aclose())


class AnthropicModel:
    provider = "anthropic"

    def __init__(self, brain: Brain, *, base_url: str = "", api_key: str = "", timeout_s: float = 120,
                 client: anthropic.AsyncAnthropic | None = None) -> None:
        """`client`: a shared one (seams.ModelClients), left open by `aclose`; else one of its own."""
        self.model, self.brain = brain.model, brain
        self._owned = client is None
        self._client = client or anthropic_client(base_url, api_key, timeout_s)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.close()

    @staticmethod
    def messages(transcript: list[Entry]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in transcript:
            if isinstance(entry, UserText):
                out.append({"role": "user", "content": [{"type": "text", "text": entry.text}]})
            elif isinstance(entry, AssistantTurn):
                blocks: list[dict[str, Any]] = [{"type": "text", "text": entry.text}] if entry.text else []
                blocks += [
                    {"type": "tool_use", "id": c.id, "name": c.name,
                     "input": c.arguments if isinstance(c.arguments, dict) else {}}
                    for c in entry.tool_calls
                ]
                out.append({"role": "assistant", "content": blocks})
            elif isinstance(entry, ToolResults):
                out.append({"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": r.call_id, "content": r.content, "is_error": r.is_error}
                    for r in entry.results
                ]})
        return out

    def request(self, system: str, transcript: list[Entry], tools: list[ToolSpec]) -> dict[str, Any]:
        """The Messages request, with its three cache breakpoints: tools, system, the conversation's end."""
        messages = self.messages(transcript)
        if messages and messages[-1]["content"]:
            messages[-1]["content"][-1]["cache_control"] = EPHEMERAL
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.brain.max_tokens or DEFAULT_MAX_TOKENS,
            # This SDK version no longer has a `temperature` parameter; the API still takes it.
            "extra_body": {"temperature": self.brain.temperature},
            "system": [{"type": "text", "text": system, "cache_control": EPHEMERAL}] if system else [],
            "messages": messages,
        }
        if tools:
            request["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.input_schema}
                                for t in tools]
            request["tools"][-1]["cache_control"] = EPHEMERAL
        return request

    async def complete(self, system: str, transcript: list[Entry], tools: list[ToolSpec]) -> ModelReply:
        request = self.request(system, transcript, tools)
        try:
            # The activation's trace context (botburrow/tracing.py): a provider that traces joins the trace.
            response = await self._client.messages.create(**request, extra_headers=tracing.with_current({}))
        except anthropic.APIStatusError as exc:
            raise ModelError(redact(f"anthropic {exc.status_code}: {exc.message}"), status=exc.status_code,
                             retry_after_s=_retry_after(exc.response.headers) if exc.status_code in
                             RETRYABLE_STATUSES else None) from None
        except (anthropic.APITimeoutError, anthropic.APIConnectionError) as exc:
            raise ModelError(f"anthropic unreachable: {type(exc).__name__}", retry_after_s=1.0) from None
        text = "".join(block.text for block in response.content if block.type == "text")
        calls = [ToolCall(block.id, block.name, dict(block.input) if isinstance(block.input, dict) else {})
                 for block in response.content if block.type == "tool_use"]
        usage = response.usage
        return ModelReply(text=text, tool_calls=calls, stop_reason=response.stop_reason,
                          input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                          cache_write_tokens=usage.cache_creation_input_tokens or 0,
                          cache_read_tokens=usage.cache_read_input_tokens or 0, model=response.model or self.model)


class OpenAIModel:
    provider = "openai"

    def __init__(self, brain: Brain, *, base_url: str, api_key: str = "", timeout_s: float = 120,
                 client: httpx.AsyncClient | None = None) -> None:
        """`client`: a shared one carrying the key (seams.ModelClients), left open by `aclose`."""
        self.model, self.brain = brain.model, brain
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._owned = client is None
        self._client = client or openai_client(api_key, timeout_s)

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    @staticmethod
    def messages(system: str, transcript: list[Entry]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"role": "system", "content": system}]
        for entry in transcript:
            if isinstance(entry, UserText):
                out.append({"role": "user", "content": entry.text})
            elif isinstance(entry, AssistantTurn):
                message: dict[str, Any] = {"role": "assistant", "content": entry.text or None}
                if entry.tool_calls:
                    message["tool_calls"] = [
                        {"id": c.id, "type": "function", "function": {
                            "name": c.name,
                            "arguments": c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)}}
                        for c in entry.tool_calls
                    ]
                out.append(message)
            elif isinstance(entry, ToolResults):
                out += [{"role": "tool", "tool_call_id": r.call_id, "content": r.content} for r in entry.results]
        return out

    async def complete(self, system: str, transcript: list[Entry], tools: list[ToolSpec]) -> ModelReply:
        body: dict[str, Any] = {"model": self.model, "temperature": self.brain.temperature,
                                "messages": self.messages(system, transcript)}
        if self.brain.max_tokens:
            body["max_tokens"] = self.brain.max_tokens
        if tools:
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.input_schema}} for t in tools]
        try:
            response = await self._client.post(self._url, json=body, headers=tracing.with_current({}))
        except httpx.HTTPError as exc:
            raise ModelError(f"openai endpoint unreachable: {type(exc).__name__}", retry_after_s=1.0) from None
        if response.status_code >= 400:
            retry = _retry_after(response.headers) if response.status_code in RETRYABLE_STATUSES else None
            if response.status_code in RETRYABLE_STATUSES and retry is None:
                retry = 1.0
            raise ModelError(redact(f"openai {response.status_code}: {response.text[:300]}"),
                             status=response.status_code, retry_after_s=retry)
        data = response.json()
        choice = data["choices"][0]
        message = choice.get("message") or {}
        calls = [ToolCall(c.get("id", ""), c["function"]["name"], parse_arguments(c["function"].get("arguments")))
                 for c in message.get("tool_calls") or []]
        prompt_tokens, cached_tokens, output_tokens = openai_usage(data.get("usage"))
        return ModelReply(text=message.get("content") or "", tool_calls=calls, stop_reason=choice.get("finish_reason"),
                          input_tokens=prompt_tokens - cached_tokens, cache_read_tokens=cached_tokens,
                          output_tokens=output_tokens, model=data.get("model", self.model))


def openai_usage(usage: Any) -> tuple[int, int, int]:
    """(prompt_tokens, of which cached, completion_tokens) from an OpenAI `usage`; zeros where absent."""
    if not isinstance(usage, dict):
        return 0, 0, 0
    details = usage.get("prompt_tokens_details")
    prompt_tokens = _count(usage.get("prompt_tokens"))
    cached = min(prompt_tokens, _count(details.get("cached_tokens"))) if isinstance(details, dict) else 0
    return prompt_tokens, cached, _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def model_for(brain: Brain, access: ModelAccess, secrets: Mapping[str, str], *, timeout_s: float,
              clients: ClientPool | None = None) -> AnthropicModel | OpenAIModel:
    """Build the model client for an agent's brain (contract §4), its endpoint and key within the operator's
    lists (ModelAccess.resolve: ModelAccessRefused, a ModelError, before any secret is read). With `clients`
    (the runner's seams.ModelClients) the HTTP client is the process's one for that endpoint and key."""
    endpoint = access.resolve(brain, secrets)
    if endpoint.key is None:
        if endpoint.protocol == "anthropic":
            raise ModelError("no Anthropic key: set secret anthropic-api-key or ANTHROPIC_API_KEY")
        env_name = brain.api_key_env or modelaccess.DEFAULT_KEY_ENV
        raise ModelError(f"no key for {brain.provider}: set secret {env_name_to_secret(env_name)} or {env_name}")
    key = endpoint.key
    if endpoint.protocol == "anthropic":
        def build(e: Endpoint) -> Any:
            return anthropic_client(e.base_url, key, timeout_s)
    else:
        def build(e: Endpoint) -> Any:
            return openai_client(key, timeout_s)
    shared = None if clients is None else clients.client(endpoint, build)
    if endpoint.protocol == "anthropic":
        return AnthropicModel(brain, base_url=endpoint.base_url, api_key=key, timeout_s=timeout_s, client=shared)
    return OpenAIModel(brain, base_url=endpoint.base_url, api_key=key, timeout_s=timeout_s, client=shared)


class ClientPool(Protocol):
    def client(self, endpoint: Endpoint, build: Callable[[Endpoint], Any]) -> Any: ...
