"""The scripted LLM against the real `anthropic` SDK and raw OpenAI-style HTTP (httpx)."""

# Test parameters named after the imported fixture are not redefinitions.

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from botburrow.cli.timeline import render
from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.scripted_llm import ScriptedLLM, cache
from botburrow.runtime.bus import Bus
from schemas.events import ToolCalled
from tests.fixtures.runner import Rig

WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
OPENAI_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["input_schema"]}}


def client(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key="test-key", max_retries=0)


async def openai_stream(url: str, body: dict[str, Any]) -> list[Any]:
    """The `data:` payloads of an OpenAI SSE answer, decoded; `[DONE]` kept as the string."""
    payloads: list[Any] = []
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"authorization": "Bearer k"}) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


async def test_anthropic_json_text_and_usage(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script([{"text": "Hello there", "usage": {"input_tokens": 11, "output_tokens": 7}}])
    message = await client(scripted_llm.url).messages.create(
        model="claude-test", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text" and message.content[0].text == "Hello there"
    assert message.stop_reason == "end_turn" and message.model == "claude-test"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 7)
    recorded = scripted_llm.requests[0]
    # SDK versions differ in sending `x-api-key` or `authorization`; either is kept, its value is not.
    auth = recorded.headers.get("x-api-key") or recorded.headers.get("authorization")
    assert auth == "[redacted]" and "test-key" not in json.dumps(recorded.headers)
    assert (recorded.step, recorded.key, recorded.provider) == (0, None, "anthropic")
    assert scripted_llm.violations == []


async def test_anthropic_streamed_tool_round_trip(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script(
        [
            {"text": "Let me check.", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
            {"text": "It is sunny in Oslo.", "expect": {"tool_results": True, "contains": "sunny, 21C"}},
        ]
    )
    llm = client(scripted_llm.url)
    messages: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    async with llm.messages.stream(
        model="claude-test", max_tokens=100, messages=messages, tools=[WEATHER_TOOL]
    ) as stream:
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    text, use = first.content
    assert text.type == "text" and text.text == "Let me check."
    assert use.type == "tool_use" and use.id.startswith("toolu_") and use.input == {"city": "Oslo"}
    # The estimate is deterministic and non-zero when the step gives no usage.
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

    messages += [
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}]},
    ]
    events = await llm.messages.create(
        model="claude-test", max_tokens=100, messages=messages, tools=[WEATHER_TOOL], stream=True
    )
    kinds, texts, final_usage = [], [], None
    async for event in events:
        kinds.append(event.type)
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            texts.append(event.delta.text)
        if event.type == "message_delta":
            final_usage = event.usage.output_tokens
    assert "".join(texts) == "It is sunny in Oslo." and len(texts) > 1
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert final_usage is not None and final_usage > 0
    assert scripted_llm.violations == [] and scripted_llm.remaining() == 0


async def test_anthropic_beta_query_unknown_beta_and_bearer_auth(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script([{"text": "ok"}])
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{scripted_llm.url}/v1/messages?beta=true",
            headers={"authorization": "Bearer tok-123456", "anthropic-beta": "made-up-2099-01-01"},
            json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        )
    assert r.status_code == 200 and r.json()["content"] == [{"type": "text", "text": "ok"}]
    assert scripted_llm.requests[0].query == "beta=true"
    assert scripted_llm.requests[0].headers["authorization"] == "[redacted]"


async def test_strict_past_end_of_script_is_an_error(scripted_llm: ScriptedLLM) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        await client(scripted_llm.url).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 500 and "no step left" in caught.value.message
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert [v.kind for v in scripted_llm.violations] == ["past_end"]


async def test_strict_unanswered_tool_use_is_a_400(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script([{"text": "never sent"}])
    messages: list[Any] = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}]},
        {"role": "user", "content": "I ignore your tool call"},
    ]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client(scripted_llm.url).messages.create(model="m", max_tokens=5, messages=messages)
    assert "toolu_1" in caught.value.message
    assert [v.kind for v in scripted_llm.violations] == ["sequence"]
    assert scripted_llm.remaining() == 1


async def test_unmet_expectation_is_a_violation(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script([{"text": "x", "expect": {"tool_results": True}}])
    with pytest.raises(anthropic.InternalServerError):
        await client(scripted_llm.url).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert [v.kind for v in scripted_llm.violations] == ["expect"]


async def test_error_steps_rate_limit_and_overloaded(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script(
        [
            {"error": {"status": 429, "message": "slow down", "retry_after_s": 7}},
            {"error": {"status": 529, "message": "busy"}},
        ]
    )
    llm = client(scripted_llm.url)
    request: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.RateLimitError) as limited:
        await llm.messages.create(**request)
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.body["error"] == {"type": "rate_limit_error", "message": "slow down"}  # type: ignore[index]
    with pytest.raises(anthropic.OverloadedError):
        await llm.messages.create(**request)
    assert scripted_llm.violations == []


async def test_missing_api_key_is_a_401(scripted_llm: ScriptedLLM) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{scripted_llm.url}/v1/chat/completions", json={"model": "m", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


async def test_openai_json_tool_call_round_trip(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script(
        [
            {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "call_1"}]},
            {"text": "Sunny.", "usage": {"input_tokens": 30, "output_tokens": 2}, "expect": {"tool_results": True}},
        ]
    )
    url, auth = f"{scripted_llm.url}/v1/chat/completions", {"authorization": "Bearer k"}
    messages: list[Any] = [{"role": "user", "content": "Weather?"}]
    async with httpx.AsyncClient() as http:
        first = (await http.post(url, headers=auth, json={"model": "gpt-x", "messages": messages})).json()
        choice = first["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        call = choice["message"]["tool_calls"][0]
        assert call["id"] == "call_1" and json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
        messages += [choice["message"], {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
        second = (await http.post(url, headers=auth, json={"model": "gpt-x", "messages": messages})).json()
    assert second["choices"][0]["message"]["content"] == "Sunny."
    usage = second["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (30, 2, 32)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert scripted_llm.violations == []


async def test_openai_stream_tool_calls_and_include_usage(scripted_llm: ScriptedLLM) -> None:
    arguments = {"city": "Oslo", "units": "metric"}
    scripted_llm.set_script(
        [
            {
                "text": "Checking",
                "tool_calls": [{"name": "get_weather", "arguments": arguments}, {"name": "noop"}],
                "usage": {"input_tokens": 9, "output_tokens": 4},
            }
        ]
    )
    body = {
        "model": "gpt-x",
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [OPENAI_TOOL],
        "messages": [{"role": "user", "content": "Weather?"}],
    }
    payloads = await openai_stream(scripted_llm.url, body)
    assert payloads[-1] == "[DONE]"
    usage_chunk, chunks = payloads[-2], payloads[:-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] == 13
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    text = ""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        delta = chunk["choices"][0]["delta"]
        text += delta.get("content") or ""
        for part in delta.get("tool_calls", []):
            entry = calls.setdefault(part["index"], {"id": None, "name": None, "arguments": ""})
            entry["id"] = part.get("id", entry["id"])
            entry["name"] = part.get("function", {}).get("name", entry["name"])
            entry["arguments"] += part.get("function", {}).get("arguments", "")
    assert text == "Checking"
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == arguments
    assert calls[1]["name"] == "noop" and calls[0]["id"].startswith("call_") and calls[0]["id"] != calls[1]["id"]


async def test_openai_unanswered_tool_call_is_a_400(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script([{"text": "never sent"}])
    call = {"id": "call_9", "type": "function", "function": {"name": "t", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "user", "content": "hm"},
    ]
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{scripted_llm.url}/v1/chat/completions",
            headers={"authorization": "Bearer k"},
            json={"model": "m", "messages": messages},
        )
    assert r.status_code == 400 and "call_9" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert [v.kind for v in scripted_llm.violations] == ["sequence"]


async def test_path_tag_and_model_keys_choose_scripts(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script([{"text": "default"}])
    scripted_llm.set_script([{"text": "for act-1"}], key="act-1")
    scripted_llm.set_script([{"text": "for model-b"}], key="model-b")
    request: dict[str, Any] = {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    tagged = await client(f"{scripted_llm.url}/act-1").messages.create(model="model-b", **request)
    by_model = await client(scripted_llm.url).messages.create(model="model-b", **request)
    plain = await client(scripted_llm.url).messages.create(model="other", **request)
    assert [m.content[0].text for m in (tagged, by_model, plain)] == ["for act-1", "for model-b", "default"]
    assert [(r.tag, r.key) for r in scripted_llm.requests] == [("act-1", "act-1"), (None, "model-b"), (None, None)]
    async with httpx.AsyncClient() as http:
        models = (await http.get(f"{scripted_llm.url}/some/tag/v1/models")).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "scripted-llm"


async def test_concurrent_delays_overlap(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script([{"text": "a", "delay_s": 0.3}, {"text": "b", "delay_s": 0.3}])
    llm = client(scripted_llm.url)
    request: dict[str, Any] = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    await asyncio.gather(llm.messages.create(**request), llm.messages.create(**request))
    first, second = scripted_llm.requests
    assert first.answered_at_s is not None and second.answered_at_s is not None
    # Both were received before either was answered: the delays ran side by side.
    assert max(first.received_at_s, second.received_at_s) < min(first.answered_at_s, second.answered_at_s)


async def test_demo_mode_answers_politely_without_tools() -> None:
    async with ScriptedLLM(strict=False) as llm:
        message = await client(llm.url).messages.create(
            model="m", max_tokens=50, messages=[{"role": "user", "content": "  hello\n  burrow "}]
        )
        payloads = await openai_stream(
            llm.url, {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi there"}]}
        )
    assert message.content[0].text == "Hello! You said: “hello burrow”."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and llm.violations == []
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1])
    assert text == "Hello! You said: “hi there”."


# --- demo mode: the agent's voice, one tool call ------------------------------------------------------------

DEV_AGENTS = Path(__file__).parents[1] / "botburrow" / "dev" / "agents"
PIRATE = (DEV_AGENTS / "pirate-captain" / "system-prompt.md").read_text(encoding="utf-8")
SEARCH_TOOL: Any = {"name": "hub__search", "description": "Search posts, agents and communities.",
                    "input_schema": {"type": "object", "properties": {"query": {"type": "string"},
                                                                      "limit": {"type": "integer"}},
                                     "required": ["query"]}}
WRITE_TOOL: Any = {"name": "hub__create_comment", "description": "Comment on a post.",
                   "input_schema": {"type": "object", "properties": {"post_id": {"type": "string"},
                                                                     "content": {"type": "string"}},
                                    "required": ["post_id", "content"]}}
TASK = "A mention from ann (post p1):\n> @pirate-captain ahoy? where be the treasure\n\nThe thread:\n..."
VOICE = ("Ahoy, matey! pirate-captain here, a cheerful pirate who answers mentions and DMs in character. "
         "You said: “ahoy? where be the treasure”. I checked hub__search for “ahoy where treasure” first: "
         "2 posts. Arr! ⚓")


def persona(name: str = "pirate-captain") -> str:
    return PIRATE.replace("{{name}}", name).replace(
        "{{description}}", "A cheerful pirate who answers mentions and DMs in character")


async def test_demo_mode_searches_once_then_answers_in_the_agent_s_voice() -> None:
    sdk_tools = [WRITE_TOOL, SEARCH_TOOL]  # never the write tool
    async with ScriptedLLM(strict=False) as llm:
        sdk = client(llm.url)
        asked = [{"role": "user", "content": TASK}]
        first = await sdk.messages.create(model="m", max_tokens=500, system=persona(), tools=sdk_tools,
                                          messages=asked)  # type: ignore[arg-type]
        (call,) = first.content
        assert first.stop_reason == "tool_use" and call.type == "tool_use"
        assert (call.name, call.input) == ("hub__search", {"query": "ahoy where treasure"})
        result = json.dumps({"posts": [{"id": "a"}, {"id": "b"}], "agents": [], "submolts": []})
        answered = [*asked, {"role": "assistant", "content": [call.model_dump()]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}]}]
        replies = [await sdk.messages.create(model="m", max_tokens=500, system=persona(), tools=sdk_tools,
                                             messages=answered) for _ in range(2)]  # type: ignore[arg-type]
    assert [r.content[0].text for r in replies] == [VOICE, VOICE]  # type: ignore[union-attr]
    assert replies[0].stop_reason == "end_turn" and llm.violations == []


async def test_demo_mode_openai_shape_and_a_cli_s_own_prompt_and_markup() -> None:
    """A CLI puts its own prompt before the agent's and <system-reminder> blocks before the task: the voice
    comes from the agent's part, and the reminder is not echoed."""
    system = "You are opencode, an interactive CLI agent.\n\n" + persona("polly")
    tool = {"type": "function", "function": {"name": "hub_search", "parameters": SEARCH_TOOL["input_schema"]}}
    user = [{"type": "text", "text": "<system-reminder>\nToday is Monday.\n</system-reminder>\n"},
            {"type": "text", "text": "ahoy, 宝はどこ?"}]
    body: dict[str, Any] = {"model": "m", "tools": [tool],
                            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    async with ScriptedLLM(strict=False) as llm, httpx.AsyncClient(base_url=llm.url) as http:
        first = (await http.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer k"})).json()
        (call,) = first["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "hub_search"
        assert json.loads(call["function"]["arguments"]) == {"query": "ahoy 宝はどこ"}
        body["messages"] += [first["choices"][0]["message"],
                             {"role": "tool", "tool_call_id": call["id"], "content": "[]"}]
        second = (await http.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer k"})).json()
    assert second["choices"][0]["message"]["content"] == (
        "Ahoy, matey! polly here, a cheerful pirate who answers mentions and DMs in character. "
        "You said: “ahoy, 宝はどこ?” I checked hub_search for “ahoy 宝はどこ” first: nothing yet. Arr! ⚓")
    assert llm.violations == []


async def test_admin_endpoints(scripted_llm: ScriptedLLM) -> None:
    async with httpx.AsyncClient(base_url=scripted_llm.url) as http:
        loaded = await http.post("/admin/script", json={"steps": [{"text": "x"}], "by_key": {"k": [{"text": "y"}]}})
        assert loaded.json()["remaining"] == {"default": 1, "by_key": {"k": 1}}
        assert (await http.post("/admin/script", json=[{"txt": "typo"}])).status_code == 400
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        for _ in range(2):
            await http.post("/v1/messages", headers={"x-api-key": "k"}, json=body)
        recorded = (await http.get("/admin/requests")).json()
        assert [r["step"] for r in recorded] == [0, None] and recorded[0]["body"] == body
        assert [v["kind"] for v in (await http.get("/admin/violations")).json()] == ["past_end"]
        await http.post("/admin/reset")
        assert (await http.get("/admin/requests")).json() == []
    assert scripted_llm.violations == [] and scripted_llm.remaining() == 0


async def test_main_serves_a_yaml_script(tmp_path: Path) -> None:
    script = tmp_path / "script.yaml"
    script.write_text("steps:\n  - text: from yaml\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botburrow.doubles.scripted_llm", "--script", str(script),
        stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), 15)).decode().strip()
        message = await client(url).messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
        assert message.content[0].text == "from yaml"  # type: ignore[union-attr]
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_max_tokens_stop_reason_maps_per_provider(scripted_llm: ScriptedLLM) -> None:
    scripted_llm.set_script([{"text": "cut", "stop_reason": "max_tokens"}] * 2)
    message = await client(scripted_llm.url).messages.create(
        model="m", max_tokens=1, messages=[{"role": "user", "content": "x"}]
    )
    payloads = await openai_stream(
        scripted_llm.url, {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    assert message.stop_reason == "max_tokens"
    assert payloads[-2]["choices"][0]["finish_reason"] == "length"


# --- prompt caching (cache.py): Anthropic's explicit breakpoints, OpenAI's automatic prefixes ---------------

LONG_SYSTEM = "You are a careful reviewer. " * 220  # ~6,000 characters: ~1,500 estimated tokens
EPHEMERAL = {"type": "ephemeral"}


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
async def cached_llm() -> Any:
    clock = FakeClock()
    llm = ScriptedLLM(strict=False, clock=clock)
    await llm.start()
    try:
        yield llm, clock
    finally:
        await llm.stop()


def cached_request(text: str, system: str = LONG_SYSTEM, model: str = "claude-sonnet-4-20250514") -> dict[str, Any]:
    return {"model": model, "max_tokens": 100,
            "tools": [{**WEATHER_TOOL, "cache_control": EPHEMERAL}],
            "system": [{"type": "text", "text": system, "cache_control": EPHEMERAL}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": text, "cache_control": EPHEMERAL}]}]}


async def usage_of(url: str, body: dict[str, Any], stream: bool = False) -> tuple[int, int, int]:
    """(input_tokens, cache_creation_input_tokens, cache_read_input_tokens) as the SDK reads them."""
    sdk = client(url)
    if stream:
        async with sdk.messages.stream(**body) as events:
            message = await events.get_final_message()
    else:
        message = await sdk.messages.create(**body)
    usage = message.usage
    return usage.input_tokens, usage.cache_creation_input_tokens or 0, usage.cache_read_input_tokens or 0


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_caches_a_long_prefix_and_reads_it_back(cached_llm: Any, stream: bool) -> None:
    llm, _ = cached_llm
    first = await usage_of(llm.url, cached_request("first question"), stream)
    second = await usage_of(llm.url, cached_request("a different question"), stream)
    assert first[1] > 1024 and first[2] == 0  # the whole prefix (and the short conversation) written
    # The second reads tools + system (written by the first's breakpoints) and writes its own conversation.
    assert 1024 < second[2] < first[1] and 0 < second[1] < 50
    assert 0 < second[0] and abs(second[0] - first[0]) <= 2  # the uncached rest: the JSON around the blocks


async def test_anthropic_prefixes_below_the_minimum_are_not_cached(cached_llm: Any) -> None:
    llm, _ = cached_llm
    short = cached_request("hi", system="Be brief.")
    assert (await usage_of(llm.url, short))[1:] == (0, 0)
    assert (await usage_of(llm.url, short))[1:] == (0, 0)
    # ~1,500 tokens: enough for a Sonnet-class model (1,024), not for a Haiku-class one (2,048).
    haiku = cached_request("hi", model="claude-3-5-haiku-20241022")
    assert (await usage_of(llm.url, haiku))[1:] == (0, 0)
    assert (await usage_of(llm.url, haiku))[1:] == (0, 0)


async def test_anthropic_ttl_is_five_minutes_refreshed_on_each_hit(cached_llm: Any) -> None:
    llm, clock = cached_llm
    body = cached_request("same")
    written = (await usage_of(llm.url, body))[1]
    for _ in range(3):  # each hit within 5 minutes keeps it alive 5 more minutes
        clock.now_s += 290
        assert (await usage_of(llm.url, body))[1:] == (0, written)
    clock.now_s += 301
    assert (await usage_of(llm.url, body))[1:] == (written, 0)  # expired: written again


async def test_anthropic_longest_cached_prefix_wins(cached_llm: Any) -> None:
    llm, _ = cached_llm
    big_tools = [{"name": f"tool_{i}", "description": "Does a thing. " * 40, "input_schema": {"type": "object"}}
                 for i in range(8)]
    body = cached_request("q")
    body["tools"] = [*big_tools[:-1], {**big_tools[-1], "cache_control": EPHEMERAL}]
    first = await usage_of(llm.url, body)
    tools_only = await usage_of(llm.url, {**body, "system": [{**body["system"][0], "text": "Another prompt. " * 400,
                                                               "cache_control": EPHEMERAL}]})
    everything = await usage_of(llm.url, body)
    assert 1024 < tools_only[2] < everything[2] == first[1]  # the tools alone; then tools + system + question


async def test_anthropic_more_than_four_breakpoints_is_a_400(scripted_llm: ScriptedLLM) -> None:
    body = cached_request("q")
    body["messages"][0]["content"] = [{"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL}
                                      for i in range(3)]
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks with cache_control"):
        await client(scripted_llm.url).messages.create(**body)


async def test_openai_caches_prefixes_automatically_in_128_token_steps(cached_llm: Any) -> None:
    llm, clock = cached_llm
    url, auth = f"{llm.url}/v1/chat/completions", {"authorization": "Bearer k"}
    system = {"role": "system", "content": LONG_SYSTEM}

    async def usage(question: str) -> dict[str, Any]:
        body = {"model": "gpt-4o", "messages": [system, {"role": "user", "content": question}]}
        async with httpx.AsyncClient() as http:
            return (await http.post(url, headers=auth, json=body)).json()["usage"]

    first = await usage("first")
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    second = await usage("second, longer question")
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 1024 and (cached - 1024) % 128 == 0 and cached <= second["prompt_tokens"]
    assert second["prompt_tokens"] - cached < 128 + 20  # only the tail past the last 128-token step is new
    streamed = await openai_stream(llm.url, {"model": "gpt-4o", "stream": True, "stream_options": {
        "include_usage": True}, "messages": [system, {"role": "user", "content": "third"}]})
    assert streamed[-2]["usage"]["prompt_tokens_details"]["cached_tokens"] == cached
    clock.now_s += 301
    assert (await usage("fourth"))["prompt_tokens_details"]["cached_tokens"] == 0
    short = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        for _ in range(2):
            assert (await http.post(url, headers=auth, json=short)).json()["usage"]["prompt_tokens_details"][
                "cached_tokens"] == 0  # below 1,024 tokens: never cached


def test_expired_prefixes_are_swept_so_a_long_run_does_not_keep_them_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "SWEEP_EVERY_PUTS", 50)
    clock = FakeClock()
    prompts = cache.PromptCache(clock)
    for n in range(40):  # each request writes its own prefixes, then time moves past their TTL
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"{n} " + "x" * 6000}]}
        assert prompts.openai("gpt-4o", body).read_tokens == 0
        clock.now_s += cache.TTL_S + 1
    assert len(prompts._entries) < 50


async def test_the_demo_agent_searches_and_answers_in_character_through_the_runner(
        bus: Bus, nats_url: str, hub_emulator: HubEmulator) -> None:
    """What `botburrow dev` shows a newcomer: the example pirate's reply is in its voice, and `botburrow show`
    has its tool call."""
    folder = DEV_AGENTS / "pirate-captain"
    async with ScriptedLLM(strict=False) as llm:
        rig = Rig(bus, nats_url, hub_emulator, llm)
        rig.keys["pirate-captain"] = hub_emulator.add_agent("pirate-captain")
        definition = parse_agent("pirate-captain", (folder / "config.yaml").read_bytes(),
                                 (folder / "system-prompt.md").read_bytes())
        await (await bus.kv(bucket.BUCKET)).put(bucket.key("agent", "pirate-captain"), bucket.encode(definition))
        await rig.start()
        try:
            note = hub_emulator.mention("pirate-captain", "ahoy? where be the treasure")
            _, end, events = await rig.activate("pirate-captain", [note])
        finally:
            await rig.close()
    assert end == "completed", events[-1]
    (tool,) = [e for e in events if isinstance(e, ToolCalled)]
    assert (tool.name, tool.arguments, tool.error) == ("hub__search", {"query": "ahoy where treasure"}, None)
    (reply,) = rig.replies_by("pirate-captain", note.post_id)
    assert reply.content.startswith("Ahoy, matey! pirate-captain here, a cheerful pirate")
    assert "You said: “ahoy? where be the treasure”" in reply.content
    assert "I checked hub__search for “ahoy where treasure” first" in reply.content
    assert reply.content.endswith(" Arr! ⚓")
    assert "tool       hub__search ok" in render(events)
