"""The scripted LLM server: a protocol-faithful double of the Anthropic and OpenAI model APIs.

Routes (each `/v1/...` route also under any path prefix, `/<tag>/v1/...`, which tags the request):
  POST /v1/messages[?beta=true]      Anthropic Messages, JSON or SSE (`stream: true`)
  POST /v1/messages/count_tokens     Anthropic token count (the deterministic estimate)
  POST /v1/chat/completions          OpenAI Chat Completions, JSON or SSE
  GET  /v1/models                    model list (parses as OpenAI's and Anthropic's)
  GET  /admin/requests, GET /admin/violations, GET|POST /admin/script, POST /admin/reset

Script choice per request: the script keyed by the path tag if one was set, else the one keyed by the
request's model name, else the default script (see `Scripts`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from botburrow.doubles.scripted_llm import anthropic_api, openai_api
from botburrow.doubles.scripted_llm.cache import Clock, PromptCache
from botburrow.doubles.scripted_llm.script import (
    Answer,
    RecordedRequest,
    Scripts,
    Step,
    Violation,
    ViolationKind,
    answer_for,
    demo_answer,
    input_tokens_of,
    iter_strings,
    parse_document,
    parse_steps,
)
from botburrow.runtime.http import RunningServer, serve
from botburrow.secrets import redact

log = logging.getLogger(__name__)

AUTH_HEADERS = {"x-api-key", "authorization", "api-key", "proxy-authorization", "cookie"}
DEFAULT_MODELS = ("scripted-llm",)


class ScriptedLLM:
    """Answers model requests from scripts; records every request and every protocol violation.

    strict (default): a request past the end of its script, an invalid message sequence or an unmet
    `expect` is an error response and a violation. Not strict (demo mode): violations are still
    recorded, but every request is answered, with a friendly tool-less reply once the script is out.
    api_key: if set, only this key is accepted (else any non-empty key).
    latency_s: (low, high): every model answer first waits a uniformly random time in that range, on
    top of a step's own `delay_s` (load and soak tests want a model that is not instant).
    clock: the prompt cache's time (`cache.PromptCache`: 5-minute TTLs), so tests move it, not sleep.
    """

    def __init__(
        self,
        steps: Sequence[Step | Mapping[str, Any]] | None = None,
        *,
        strict: bool = True,
        api_key: str | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        latency_s: tuple[float, float] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.strict = strict
        self.cache = PromptCache(clock)
        self.latency_s = latency_s
        self.api_key = api_key
        self.models = list(models)
        self.requests: list[RecordedRequest] = []
        self.violations: list[Violation] = []
        self._scripts = Scripts()
        self._server: RunningServer | None = None
        if steps is not None:
            self.set_script(steps)
        self.app = self._build_app()

    # -- Python API ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
        if self._server is not None:
            raise RuntimeError("scripted LLM already started")
        self._server = await serve(self.app, host, port)
        return self._server

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    async def __aenter__(self) -> ScriptedLLM:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """Base URL without `/v1` (what ANTHROPIC_BASE_URL wants; OpenAI clients add `/v1`)."""
        if self._server is None:
            raise RuntimeError("scripted LLM not started")
        return self._server.url

    def set_script(self, steps: Sequence[Step | Mapping[str, Any]], key: str | None = None) -> None:
        """Replace the script of `key` (None: the default script) and rewind it."""
        self._scripts.set(parse_steps(steps), key)

    def load(self, document: Any) -> None:
        """Load a script document (see `parse_document`): a list of steps or `{steps, key, by_key}`."""
        for key, steps in parse_document(document).items():
            self._scripts.set(steps, key)

    def remaining(self, key: str | None = None) -> int:
        return self._scripts.remaining(key)

    def reset(self) -> None:
        """Forget scripts, recorded requests, violations and the prompt cache."""
        self.cache.clear()
        self._scripts.clear()
        self.requests.clear()
        self.violations.clear()

    # -- HTTP ------------------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        def model_call(api: ModuleType) -> Any:
            async def endpoint(request: Request) -> Response:
                return await self._model_call(request, api)

            return endpoint

        routes = [
            Route("/admin/requests", self._admin_requests, methods=["GET"]),
            Route("/admin/violations", self._admin_violations, methods=["GET"]),
            Route("/admin/script", self._admin_script, methods=["GET", "POST"]),
            Route("/admin/reset", self._admin_reset, methods=["POST"]),
        ]
        for prefix in ("", "/{tag:path}"):
            routes += [
                Route(f"{prefix}/v1/messages", model_call(anthropic_api), methods=["POST"]),
                Route(f"{prefix}/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route(f"{prefix}/v1/chat/completions", model_call(openai_api), methods=["POST"]),
                Route(f"{prefix}/v1/models", self._models, methods=["GET"]),
            ]
        return Starlette(routes=routes)

    async def _model_call(self, request: Request, api: ModuleType) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        fields = body if isinstance(body, dict) else {}
        record = RecordedRequest(
            index=len(self.requests),
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            provider=api.NAME,
            tag=request.path_params.get("tag"),
            model=fields.get("model") if isinstance(fields.get("model"), str) else None,
            stream=fields.get("stream") is True,
            headers=_safe_headers(request.headers),
            body=body,
            received_at_s=time.time(),
        )
        self.requests.append(record)
        response = await self._answer(record, api, _credential(request.headers))
        record.status = response.status_code
        record.answered_at_s = time.time()
        return response

    async def _answer(self, record: RecordedRequest, api: ModuleType, credential: str) -> Response:
        auth_problem = self._auth_problem(credential)
        if auth_problem:
            self._violate("auth", auth_problem, record)
            return api.error(401, auth_problem)
        body = record.body
        if not isinstance(body, dict):
            self._violate("bad_request", "request body is not a JSON object", record)
            return api.error(400, "request body is not a JSON object")
        problem = api.check_shape(body)
        if problem:
            self._violate("bad_request", problem, record)
            return api.error(400, problem)
        problem = api.check_sequence(body["messages"])
        if problem:
            self._violate("sequence", problem, record)
            if self.strict:
                return api.error(400, problem)
        answer = await self._scripted_answer(record, body, api)
        if isinstance(answer, Response):
            return answer
        model = record.model or self.models[0]
        return api.render(self._cached(api, model, body, answer), model, body, record.stream)

    def _cached(self, api: ModuleType, model: str, body: dict[str, Any], answer: Answer) -> Answer:
        """The answer's input split as the prompt cache serves this request (the cache is updated even
        when the step scripted its usage, which is then reported as scripted)."""
        usage = self.cache.anthropic(model, body) if api.NAME == "anthropic" else self.cache.openai(model, body)
        if answer.usage_scripted:
            return answer
        read = min(usage.read_tokens, answer.input_tokens)
        write = min(usage.write_tokens, answer.input_tokens - read)
        return msgspec.structs.replace(answer, input_tokens=answer.input_tokens - read - write,
                                       cache_write_tokens=write, cache_read_tokens=read)

    async def _scripted_answer(
        self, record: RecordedRequest, body: dict[str, Any], api: ModuleType
    ) -> Answer | Response:
        if self.latency_s is not None:
            await asyncio.sleep(random.uniform(*self.latency_s))
        record.key = key = self._scripts.choose_key(record.tag, record.model)
        taken = self._scripts.take(key)
        if taken is None:
            if not self.strict:
                return demo_answer(api.last_user_text(body), body)
            script = "the default script" if key is None else f"script {key!r}"
            message = (
                f"scripted LLM: no step left in {script} ({self._scripts.total(key)} steps) "
                f"for request #{record.index} to {record.path}"
            )
            self._violate("past_end", message, record)
            return api.error(500, message)
        record.step, step = taken
        unmet = _unmet_expectation(step, body, api)
        if unmet:
            message = f"scripted LLM: step {record.step} of {key or 'default'} expected {unmet}"
            self._violate("expect", message, record)
            if self.strict:
                return api.error(500, message)
        if step.delay_s > 0:
            await asyncio.sleep(step.delay_s)
        if step.error is not None:
            return api.error(step.error.status, step.error.message, step.error.retry_after_s)
        return answer_for(step, body)

    def _auth_problem(self, key: str) -> str | None:
        if not key:
            return "missing API key: send `x-api-key` or `Authorization: Bearer <key>`"
        if self.api_key is not None and key != self.api_key:
            return "invalid API key"
        return None

    def _violate(self, kind: ViolationKind, message: str, record: RecordedRequest) -> None:
        violation = Violation(kind=kind, message=message, request_index=record.index, at_s=time.time())
        self.violations.append(violation)
        log.warning("scripted LLM violation", extra={"kind": kind, "detail": redact(message)})

    async def _count_tokens(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return anthropic_api.error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return anthropic_api.error(400, "request body is not a JSON object")
        return JSONResponse({"input_tokens": input_tokens_of(body)})

    async def _models(self, request: Request) -> Response:
        return openai_api.models(self.models)

    async def _admin_requests(self, request: Request) -> Response:
        return Response(msgspec.json.encode(self.requests), media_type="application/json")

    async def _admin_violations(self, request: Request) -> Response:
        return Response(msgspec.json.encode(self.violations), media_type="application/json")

    async def _admin_script(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.load(json.loads(await request.body()))
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"remaining": self._scripts.summary(), "strict": self.strict})

    async def _admin_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True})


def _credential(headers: Mapping[str, str]) -> str:
    bearer = headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        bearer = bearer[len("bearer ") :]
    else:
        bearer = ""
    return headers.get("x-api-key", "").strip() or bearer.strip()


def _safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: "[redacted]" if name.lower() in AUTH_HEADERS else redact(value) for name, value in headers.items()}


def _unmet_expectation(step: Step, body: dict[str, Any], api: ModuleType) -> str | None:
    expect = step.expect
    if expect is None:
        return None
    if expect.tool_results is not None and api.has_tool_results(body) != expect.tool_results:
        return "tool results in the last message" if expect.tool_results else "no tool results"
    if expect.contains is not None and not any(expect.contains in s for s in iter_strings(body)):
        return f"the request to contain {expect.contains!r}"
    return None
