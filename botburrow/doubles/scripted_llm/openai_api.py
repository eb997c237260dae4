"""OpenAI Chat Completions (`POST /v1/chat/completions`, `GET /v1/models`): checks, answers, errors.

Streaming follows api.openai.com: `data: {chunk}` lines, tool-call deltas by index (id and name first,
then argument fragments), a final chunk with `finish_reason`, the usage chunk (`choices: []`) when
`stream_options.include_usage` is set, then `data: [DONE]`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from starlette.responses import JSONResponse, Response

from botburrow.doubles.scripted_llm.script import Answer, chunks
from botburrow.doubles.scripted_llm.wire import dumps, new_id, retry_headers, sse_response

NAME = "openai"

FINISH_REASONS = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length"}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def error(status: int, message: str, retry_after_s: float | None = None) -> Response:
    kind, code = "server_error", None
    if status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status == 401:
        kind, code = "invalid_request_error", "invalid_api_key"
    elif status < 500:
        kind = "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=retry_headers(retry_after_s))


def check_shape(body: dict[str, Any]) -> str | None:
    """None if fields and roles are valid, else the message OpenAI's API would answer with a 400."""
    for field in ("model", "messages"):
        if field not in body:
            return f"Missing required parameter: '{field}'."
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "Invalid 'messages': empty array. Expected an array with minimum length 1."
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            return f"Invalid value for 'messages[{index}].role': {role!r}."
    return None


def _unanswered(pending: Sequence[str]) -> str:
    return (
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}"
    )


def check_sequence(messages: list[dict[str, Any]]) -> str | None:
    """None if every tool call is answered and every tool result answers one, else the 400 message."""
    pending: list[str] = []
    for index, message in enumerate(messages):
        role = message["role"]
        if pending and role != "tool":
            return _unanswered(pending)
        if role == "tool":
            call_id = str(message.get("tool_call_id"))
            if call_id not in pending:
                return (
                    f"Invalid parameter: messages[{index}] with role 'tool' must be a response to a "
                    f"preceding message with 'tool_calls' (no open tool call {call_id!r})."
                )
            pending.remove(call_id)
        elif role == "assistant":
            calls = message.get("tool_calls") or []
            pending = [str(call.get("id")) for call in calls if isinstance(call, dict)]
    return _unanswered(pending) if pending else None


def has_tool_results(body: dict[str, Any]) -> bool:
    return body["messages"][-1]["role"] == "tool"


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] != "user":
            continue
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            return content
        if isinstance(content, list):
            parts = [str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if " ".join(parts).strip():
                return " ".join(parts).strip()
    return ""


def models(names: Sequence[str]) -> Response:
    # Extra fields make one listing parse as both OpenAI's and Anthropic's `GET /v1/models`.
    data = [
        {
            "id": name,
            "object": "model",
            "type": "model",
            "created": 0,
            "created_at": "1970-01-01T00:00:00Z",
            "owned_by": "scripted-llm",
            "display_name": name,
        }
        for name in names
    ]
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return JSONResponse({"object": "list", "data": data, "has_more": False, "first_id": first, "last_id": last})


def _usage(answer: Answer) -> dict[str, Any]:
    # OpenAI's prompt_tokens include the cached ones (`prompt_tokens_details.cached_tokens`).
    prompt_tokens = answer.input_tokens + answer.cache_write_tokens + answer.cache_read_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": prompt_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": answer.cache_read_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def _tool_calls(answer: Answer) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id or new_id("call_"),
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)},
        }
        for call in answer.tool_calls
    ]


def render(answer: Answer, model: str, body: dict[str, Any], stream: bool) -> Response:
    head = {"id": new_id("chatcmpl-"), "created": int(time.time()), "model": model}
    calls = _tool_calls(answer)
    finish = FINISH_REASONS[answer.stop_reason]
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text or None, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        return JSONResponse({**head, "object": "chat.completion", "choices": [choice], "usage": _usage(answer)})
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return sse_response(_frames(head, answer, calls, finish, include_usage))


def _frames(
    head: dict[str, Any], answer: Answer, calls: list[dict[str, Any]], finish: str, include_usage: bool
) -> Iterator[str]:
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        data: dict[str, Any] = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }
        if include_usage:
            data["usage"] = None
        return f"data: {dumps(data)}\n\n"

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in chunks(answer.text):
        yield chunk({"content": piece})
    for index, call in enumerate(calls):
        function = call["function"]
        opening = {"index": index, "id": call["id"], "type": "function"}
        yield chunk({"tool_calls": [{**opening, "function": {"name": function["name"], "arguments": ""}}]})
        for piece in chunks(function["arguments"]):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, finish)
    if include_usage:
        usage_chunk = {**head, "object": "chat.completion.chunk", "choices": [], "usage": _usage(answer)}
        yield f"data: {dumps(usage_chunk)}\n\n"
    yield "data: [DONE]\n\n"
