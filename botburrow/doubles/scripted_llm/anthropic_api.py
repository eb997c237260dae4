"""Anthropic Messages API (`POST /v1/messages`): request checks, JSON and SSE answers, errors.

The shapes follow what api.anthropic.com sends, so the `anthropic` SDK and Claude Code parse them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from starlette.responses import JSONResponse, Response

from botburrow.doubles.scripted_llm.cache import breakpoint_problem
from botburrow.doubles.scripted_llm.script import Answer, chunks
from botburrow.doubles.scripted_llm.wire import dumps, new_id, retry_headers, sse_response

NAME = "anthropic"

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error(status: int, message: str, retry_after_s: float | None = None) -> Response:
    request_id = new_id("req_")
    body = {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": request_id,
    }
    headers = {"request-id": request_id, **retry_headers(retry_after_s)}
    return JSONResponse(body, status_code=status, headers=headers)


def _blocks(message: Any) -> list[dict[str, Any]]:
    content = message.get("content") if isinstance(message, dict) else None
    return [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []


def _ids(message: Any, block_type: str, field: str) -> list[str]:
    return [str(block.get(field)) for block in _blocks(message) if block.get("type") == block_type]


def check_shape(body: dict[str, Any]) -> str | None:
    """None if fields and roles are valid, else the message Anthropic's API would answer with a 400."""
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            return f"{field}: Field required"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
    return breakpoint_problem(body)


def check_sequence(messages: list[dict[str, Any]]) -> str | None:
    """None if every tool call is answered and every tool result answers one, else the 400 message."""
    for index, message in enumerate(messages):
        following = messages[index + 1] if index + 1 < len(messages) else None
        if message["role"] == "assistant":
            uses = _ids(message, "tool_use", "id")
            answered = set(_ids(following, "tool_result", "tool_use_id")) if following else set()
            if following is not None and following["role"] != "user":
                answered = set()
            missing = [use for use in uses if use not in answered]
            if missing:
                return (
                    f"messages.{index + 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message."
                )
            continue
        previous = messages[index - 1] if index > 0 else None
        offered = set(_ids(previous, "tool_use", "id")) if previous and previous["role"] == "assistant" else set()
        unexpected = [result for result in _ids(message, "tool_result", "tool_use_id") if result not in offered]
        if unexpected:
            return (
                f"messages.{index}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(unexpected)}. Each `tool_result` block must have a corresponding `tool_use` "
                "block in the previous message."
            )
    return None


def has_tool_results(body: dict[str, Any]) -> bool:
    last = body["messages"][-1]
    return last["role"] == "user" and bool(_ids(last, "tool_result", "tool_use_id"))


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body["messages"]):
        if message["role"] != "user":
            continue
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            return content
        text = " ".join(str(b.get("text", "")) for b in _blocks(message) if b.get("type") == "text").strip()
        if text:
            return text
    return ""


def _content(answer: Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if answer.text or not answer.tool_calls:
        blocks.append({"type": "text", "text": answer.text})
    for call in answer.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id or new_id("toolu_01"), "name": call.name, "input": call.arguments}
        )
    return blocks


def _usage(answer: Answer, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": answer.input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": answer.cache_write_tokens,
        "cache_read_input_tokens": answer.cache_read_tokens,
    }


def render(answer: Answer, model: str, body: dict[str, Any], stream: bool) -> Response:
    message = {
        "id": new_id("msg_01"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _content(answer),
        "stop_reason": answer.stop_reason,
        "stop_sequence": None,
        "usage": _usage(answer, answer.output_tokens),
    }
    if not stream:
        return JSONResponse(message, headers={"request-id": new_id("req_")})
    return sse_response(_frames(message, answer), headers={"request-id": new_id("req_")})


def _frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {dumps({'type': event, **data})}\n\n"


def _frames(message: dict[str, Any], answer: Answer) -> Iterator[str]:
    # As Anthropic streams: the message shell with empty content and a partial output count first.
    start = {**message, "content": [], "stop_reason": None, "usage": _usage(answer, 1)}
    yield _frame("message_start", {"message": start})
    yield _frame("ping", {})
    for index, block in enumerate(message["content"]):
        yield from _block_frames(index, block)
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield _frame("message_delta", {"delta": delta, "usage": {"output_tokens": answer.output_tokens}})
    yield _frame("message_stop", {})


def _block_frames(index: int, block: dict[str, Any]) -> Iterator[str]:
    if block["type"] == "text":
        yield _frame("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
        for piece in chunks(block["text"]):
            yield _frame("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
    else:
        shell = {**block, "input": {}}
        yield _frame("content_block_start", {"index": index, "content_block": shell})
        arguments = json.dumps(block["input"], ensure_ascii=False)
        for piece in ["", *chunks(arguments)]:
            delta = {"type": "input_json_delta", "partial_json": piece}
            yield _frame("content_block_delta", {"index": index, "delta": delta})
    yield _frame("content_block_stop", {"index": index})
