"""The runner-side model gateway (contract §4): how a CLI in a sandbox reaches the model without a key.

One HTTP server per runner process speaks the providers' own APIs:

  POST [/<token>]/v1/messages[?beta=true]   Anthropic Messages, JSON or SSE (passed through as it streams)
  POST [/<token>]/v1/chat/completions       OpenAI Chat Completions, JSON or SSE
  GET  [/<token>]/v1/models                 the activation's model (goose's OpenAI provider asks first)

Each activation opens a `GatewaySession` with a random short-lived token; a request is accepted only
if its path tag or its key (`x-api-key`, `Authorization: Bearer`, `api-key`) is a live token. The
gateway drops the caller's credentials, adds the real key upstream, refuses calls past the
activation's deadline or token budget and calls of any model but the config's `brain.model` and the
CLI's own housekeeping models (listed per executor), clamps `max_tokens` to the config's and to the
budget left, and records every answered call as an `llm` run event with the
provider's usage (from the JSON body, or the SSE `message_start`/`message_delta` and `include_usage`
chunks), charging it to the activation's `Budget` (the one the native loop charges).

The CLIs' prompt caching passes through intact: a body's `cache_control` blocks are forwarded as they
came (only `max_tokens`, `n` and `thinking` may be changed), with the `anthropic-beta` header, and the
usage's cache fields are counted apart from the uncached input, as the native loop counts them
(Anthropic's `cache_creation_input_tokens`/`cache_read_input_tokens`; OpenAI's
`prompt_tokens_details.cached_tokens`, which its `prompt_tokens` include).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from botburrow import tracing
from botburrow.runtime.http import RunningServer, serve
from botburrow.secrets import redact
from botburrow.tracing import SpanRef
from schemas.agent import Brain
from services.runner.loop import Budget, Recorder
from services.runner.modelaccess import ModelAccess
from services.runner.transcript import ModelReply, ToolCall, parse_arguments

log = logging.getLogger(__name__)

# Request headers worth forwarding; everything else (credentials, hop-by-hop, encodings) stays here.
FORWARDED_HEADERS = ("content-type", "accept", "anthropic-version", "anthropic-beta", "openai-organization")
UPSTREAM_TIMEOUT_S = 300.0
MIN_THINKING_TOKENS = 1024  # Anthropic's smallest thinking budget
UNASKED_OUTPUT_CAP = 4096  # an OpenAI request without max_tokens is capped below this budget (see enforce)


@dataclass(frozen=True)
class Upstream:
    """Where one provider's calls go, and the real key they carry (never shown to the sandbox)."""

    base_url: str  # without /v1
    key: str | None


def upstreams_for(brain: Brain, access: ModelAccess, secret_env: Mapping[str, str]) -> dict[str, Upstream]:
    """Upstreams per wire protocol, by the one resolution (ModelAccess.resolve): a key or endpoint the
    operator does not allow raises ModelAccessRefused before any secret is read."""
    out = {}
    for protocol in ("anthropic", "openai"):
        endpoint = access.resolve(brain, secret_env, protocol)
        out[protocol] = Upstream(endpoint.base_url.removesuffix("/v1"), endpoint.key)
    return out


@dataclass
class GatewaySession:
    """One activation's access: its token, recorder and budget (shared with the activation: what the CLI
    spends through the gateway is charged to it, and its token limit and deadline refuse calls)."""

    token: str
    activation_id: str
    model: str
    upstreams: dict[str, Upstream]
    recorder: Recorder
    budget: Budget
    # The models this activation may call: its config's, plus its CLI's own housekeeping models.
    models: frozenset[str] = frozenset()
    max_output_tokens: int | None = None  # the config's brain.max_tokens
    base_url: str = ""  # the gateway URL with this session's tag, without /v1
    # Set with the reason when the activation's limits are spent: the executor stops its CLI.
    exceeded: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None
    turns: int = 0
    last_text: str = ""  # the last answer's text (for CLIs whose own output is not structured)
    # The activation's trace context, taken where the session opens (the activation's task): sent upstream.
    trace: SpanRef | None = field(default_factory=tracing.CURRENT.get)

    def refuse_reason(self) -> str | None:
        return self.budget.spent()

    def output_cap(self) -> int:
        """The most output tokens one call may ask for: the config's max_tokens and what the budget has left."""
        remaining = max(1, self.budget.remaining_tokens())
        return remaining if self.max_output_tokens is None else min(self.max_output_tokens, remaining)

    def fail(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.exceeded.set()


class ModelGateway:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._sessions: dict[str, GatewaySession] = {}
        self._server: RunningServer | None = None
        self._client: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])

    async def start(self) -> None:
        async with self._lock:
            if self._server is None:
                self._client = httpx.AsyncClient(timeout=httpx.Timeout(UPSTREAM_TIMEOUT_S, connect=10.0))
                self._server = await serve(self.app, self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def bound_port(self) -> int:
        if self._server is None:
            raise RuntimeError("model gateway not started")
        return self._server.port

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("model gateway not started")
        return self._server.url

    @contextlib.asynccontextmanager
    async def session(self, *, activation_id: str, brain: Brain, access: ModelAccess, secret_env: Mapping[str, str],
                      recorder: Recorder, budget: Budget,
                      housekeeping_models: Iterable[str] = ()) -> AsyncIterator[GatewaySession]:
        """A live token for the block's duration; afterwards every request with it is refused. The session
        calls only `brain.model` and the CLI's `housekeeping_models` (listed per executor)."""
        upstreams = upstreams_for(brain, access, secret_env)  # refuses a key or endpoint the operator does not allow
        await self.start()
        token = "bbgw-" + secrets.token_urlsafe(24)
        session = GatewaySession(token=token, activation_id=activation_id, model=brain.model,
                                 upstreams=upstreams, recorder=recorder, budget=budget,
                                 models=frozenset({brain.model, *housekeeping_models}),
                                 max_output_tokens=brain.max_tokens, base_url=f"{self.url}/{token}")
        self._sessions[token] = session
        try:
            yield session
        finally:
            del self._sessions[token]

    # -- HTTP ------------------------------------------------------------------------------------

    def _find(self, request: Request, tag: str) -> GatewaySession | None:
        headers = request.headers
        bearer = headers.get("authorization", "")
        bearer = bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""
        for candidate in (tag, headers.get("x-api-key", "").strip(), bearer, headers.get("api-key", "").strip()):
            if candidate and candidate in self._sessions:
                return self._sessions[candidate]
        return None

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        tag, sep, api_path = path.partition("/v1/")
        if not sep:
            return _error("openai", 404, f"no such route: {request.method} {redact(path)}")
        provider = "anthropic" if api_path.startswith("messages") else "openai"
        session = self._find(request, tag.strip("/"))
        if session is None:
            return _error(provider, 401, "invalid or expired activation token")
        if request.method == "GET" and api_path == "models":
            return JSONResponse({"object": "list", "data": [
                {"id": session.model, "object": "model", "type": "model", "created": 0, "owned_by": "botburrow",
                 "display_name": session.model}], "has_more": False})
        if request.method != "POST" or api_path not in ("messages", "messages/count_tokens", "chat/completions"):
            return _error(provider, 404, f"no such route: {request.method} /v1/{api_path}")
        refused = session.refuse_reason()
        if refused:
            session.fail(refused)
            # 400, not 429 or 5xx: the CLIs retry those, and this activation is over.
            return _error(provider, 400, f"activation limit reached: {refused}")
        return await self._forward(request, session, provider, api_path)

    async def _forward(self, request: Request, session: GatewaySession, provider: str, api_path: str) -> Response:
        upstream = session.upstreams[provider]
        if not upstream.base_url or upstream.key is None:
            return _error(provider, 400, f"no {provider} endpoint or key configured for this agent")
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_HEADERS}
        headers["accept-encoding"] = "identity"  # the gateway reads the stream to take usage from it
        tracing.with_current(headers, session.trace)
        if provider == "anthropic":
            headers["x-api-key"] = upstream.key
        else:
            headers["authorization"] = f"Bearer {upstream.key}"
        url = f"{upstream.base_url}/v1/{api_path}" + (f"?{request.url.query}" if request.url.query else "")
        body, refusal = enforce(session, provider, api_path, await request.body())
        if refusal is not None:
            log.warning("model call refused", extra={"activation_id": session.activation_id, "reason": refusal})
            return _error(provider, 400, refusal)
        assert self._client is not None
        started_s = time.monotonic()
        try:
            upstream_response = await self._client.send(
                self._client.build_request("POST", url, content=body, headers=headers), stream=True)
        except httpx.HTTPError as exc:
            return _error(provider, 502, f"model upstream unreachable: {type(exc).__name__}")
        recording = api_path != "messages/count_tokens" and upstream_response.status_code < 400
        meter = Meter(provider, _json_or_none(body)) if recording else None
        out_headers = {k: v for k, v in upstream_response.headers.items()
                       if k.lower() in ("content-type", "request-id", "retry-after", "retry-after-ms")}

        async def relay() -> AsyncIterator[bytes]:
            # One chunk behind: the answer is recorded before its last bytes leave, so a client that
            # has the whole answer can rely on its `llm` event (and the totals) being there.
            held: bytes | None = None
            try:
                async for chunk in upstream_response.aiter_raw():
                    if meter is not None:
                        meter.feed(chunk)
                    if held is not None:
                        yield held
                    held = chunk
                if meter is not None:
                    await self._record(session, meter, provider, (time.monotonic() - started_s) * 1000)
                if held is not None:
                    yield held
            finally:
                await upstream_response.aclose()

        return StreamingResponse(relay(), status_code=upstream_response.status_code, headers=out_headers)

    async def _record(self, session: GatewaySession, meter: Meter, provider: str, duration_ms: float) -> None:
        reply = meter.reply(session.model)
        session.turns += 1
        session.last_text = reply.text
        session.budget.charge(reply)
        try:
            await session.recorder.llm(session.turns, reply, duration_ms, provider)
        except Exception:  # the CLI's answer is already on its way; a lost event must not break it
            log.exception("recording an llm event failed", extra={"activation_id": session.activation_id})
        if session.budget.over_tokens():
            session.fail("max_tokens")


def enforce(session: GatewaySession, provider: str, api_path: str, raw: bytes) -> tuple[bytes, str | None]:
    """The activation's config applied to one request: (the body to forward, None) or (b"", why it is
    refused). Only the session's models; `max_tokens` at most the config's and what the budget has left."""
    body = _json_or_none(raw)
    if body is None:
        return b"", "the request body is not a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or model not in session.models:
        allowed = ", ".join(sorted(session.models))
        return b"", f"model {str(model)[:100]!r} is not allowed for this activation (allowed: {allowed})"
    if api_path == "messages/count_tokens":
        return raw, None
    cap = session.output_cap()
    if provider == "anthropic":
        body["max_tokens"] = min(_int(body.get("max_tokens"), cap), cap)
        _fit_thinking(body)
    else:
        if "n" in body:
            body["n"] = 1  # n answers would spend n times the output budget
        asked = [key for key in ("max_tokens", "max_completion_tokens") if key in body]
        for key in asked:
            body[key] = min(_int(body[key], cap), cap)
        if not asked and (session.max_output_tokens is not None or cap < UNASKED_OUTPUT_CAP):
            # Absent means the model's own maximum; capped here only when the config or a nearly spent
            # budget says so (a budget-sized value would exceed most models' output limit and be refused).
            body["max_tokens"] = cap
    try:
        return json.dumps(body).encode(), None
    except (ValueError, RecursionError):
        return b"", "the request body cannot be re-encoded"


def _count(value: object) -> int:
    """A token count from a provider's usage; anything but a positive int is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _fit_thinking(body: dict[str, Any]) -> None:
    """Anthropic wants `thinking.budget_tokens` below `max_tokens` and at least 1024: a clamped request
    thinks less, or not at all when too little is left (Claude Code asks 31999 of 32000)."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return
    budget = _int(thinking.get("budget_tokens"), MIN_THINKING_TOKENS)
    if budget < body["max_tokens"]:
        return
    if body["max_tokens"] - 1 >= MIN_THINKING_TOKENS:
        body["thinking"] = {**thinking, "budget_tokens": body["max_tokens"] - 1}
    else:
        del body["thinking"]


def _json_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return None
    return value if isinstance(value, dict) else None


def _error(provider: str, status: int, message: str) -> Response:
    if provider == "anthropic":
        return JSONResponse({"type": "error", "error": {"type": "invalid_request_error" if status < 500
                                                          else "api_error", "message": message}}, status)
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": None}}, status)


class Meter:
    """Rebuilds one model answer (text, tool calls, usage) from the bytes passed through, JSON or SSE."""

    def __init__(self, provider: str, request: dict[str, Any] | None) -> None:
        self.provider = provider
        self.model: str | None = (request or {}).get("model")
        self._buffer = bytearray()
        self._is_sse: bool | None = None
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.stop_reason: str | None = None
        self.input_tokens = self.output_tokens = 0  # input: uncached
        self.cache_write_tokens = self.cache_read_tokens = 0

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        if self._is_sse is None and self._buffer.strip():
            self._is_sse = not self._buffer.lstrip().startswith(b"{")
        if not self._is_sse:
            return
        while b"\n" in self._buffer:
            line, _, rest = self._buffer.partition(b"\n")
            self._buffer = bytearray(rest)
            text = line.decode("utf-8", "replace").strip()
            if text.startswith("data:"):
                data = _json_or_none(text[5:].strip().encode())
                if data is not None:
                    self._event(data)

    def _event(self, data: dict[str, Any]) -> None:
        if self.provider == "anthropic":
            self._anthropic_event(data)
        else:
            self._openai_chunk(data)

    def _anthropic_event(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self.model = message.get("model") or self.model
            self._anthropic_usage(message.get("usage") or {})
        elif kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.calls[data.get("index", 0)] = {"id": block.get("id", ""), "name": block.get("name", ""),
                                                    "arguments": ""}
            elif block.get("type") == "text":
                self.text.append(block.get("text", ""))
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.text.append(delta.get("text", ""))
            elif delta.get("type") == "input_json_delta" and data.get("index", 0) in self.calls:
                self.calls[data.get("index", 0)]["arguments"] += delta.get("partial_json", "")
        elif kind == "message_delta":
            self.stop_reason = (data.get("delta") or {}).get("stop_reason") or self.stop_reason
            self._anthropic_usage(data.get("usage") or {})

    def _anthropic_usage(self, usage: dict[str, Any]) -> None:
        # message_delta carries the final output count (and, on newer APIs, the input counts again).
        if any(usage.get(k) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")):
            self.input_tokens = _count(usage.get("input_tokens"))
            self.cache_write_tokens = _count(usage.get("cache_creation_input_tokens"))
            self.cache_read_tokens = _count(usage.get("cache_read_input_tokens"))
        if usage.get("output_tokens") is not None:
            self.output_tokens = _count(usage["output_tokens"])

    def _openai_usage(self, usage: dict[str, Any]) -> None:
        # prompt_tokens include the cached ones: the uncached input is the rest.
        details = usage.get("prompt_tokens_details")
        prompt_tokens = _count(usage.get("prompt_tokens"))
        self.cache_read_tokens = min(prompt_tokens, _count(details.get("cached_tokens"))
                                     if isinstance(details, dict) else 0)
        self.input_tokens = prompt_tokens - self.cache_read_tokens
        self.output_tokens = _count(usage.get("completion_tokens"))

    def _openai_chunk(self, data: dict[str, Any]) -> None:
        self.model = data.get("model") or self.model
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._openai_usage(usage)
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.text.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(call.get("index", 0), {"id": "", "name": "", "arguments": ""})
                function = call.get("function") or {}
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] = function.get("name") or slot["name"]
                slot["arguments"] += function.get("arguments") or ""
            self.stop_reason = choice.get("finish_reason") or self.stop_reason

    def _whole_body(self) -> None:
        data = _json_or_none(bytes(self._buffer)) or {}
        if self.provider == "anthropic":
            self.model = data.get("model") or self.model
            for index, block in enumerate(data.get("content") or []):
                if block.get("type") == "text":
                    self.text.append(block.get("text", ""))
                elif block.get("type") == "tool_use":
                    self.calls[index] = {"id": block.get("id", ""), "name": block.get("name", ""),
                                         "arguments": block.get("input") or {}}
            self.stop_reason = data.get("stop_reason")
            self._anthropic_usage(data.get("usage") or {})
            return
        self.model = data.get("model") or self.model
        usage = data.get("usage")
        self._openai_usage(usage if isinstance(usage, dict) else {})
        for choice in data.get("choices") or []:
            message = choice.get("message") or {}
            self.text.append(message.get("content") or "")
            for index, call in enumerate(message.get("tool_calls") or []):
                function = call.get("function") or {}
                self.calls[index] = {"id": call.get("id", ""), "name": function.get("name", ""),
                                     "arguments": function.get("arguments") or ""}
            self.stop_reason = choice.get("finish_reason")

    def reply(self, default_model: str) -> ModelReply:
        if self._is_sse is False:
            self._whole_body()
        calls = [ToolCall(c["id"], c["name"], parse_arguments(c["arguments"])) for _, c in sorted(self.calls.items())]
        return ModelReply(text="".join(self.text), tool_calls=calls, stop_reason=self.stop_reason,
                          input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                          cache_write_tokens=self.cache_write_tokens, cache_read_tokens=self.cache_read_tokens,
                          model=self.model or default_model)
