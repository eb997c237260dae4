"""The model gateway between a real client and the scripted LLM: tokens, keys, streaming, usage, limits."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import anthropic
import httpx
import pytest

from botburrow.schemas.agent import Brain
from botburrow.services.runner.gateway import ModelGateway
from botburrow.services.runner.loop import LoopLimits, LoopResult, ToolOutcome
from botburrow.services.runner.transcript import ModelReply, ToolCall
from botburrow.services.scripted_llm import ScriptedLLM

REAL_KEY = "sk-real-upstream-key-0123456789"
OPENAI_KEY = "sk-real-openai-key-0123456789"


class Recorder:
    def __init__(self) -> None:
        self.turns: list[tuple[int, ModelReply, str]] = []

    async def llm(self, turn: int, reply: ModelReply, duration_ms: float, provider: str) -> None:
        self.turns.append((turn, reply, provider))

    async def tool(self, turn: int, call: ToolCall, outcome: ToolOutcome, duration_ms: float) -> None:
        raise AssertionError("the gateway records no tool events")


@pytest.fixture
async def llm() -> AsyncIterator[ScriptedLLM]:
    async with ScriptedLLM(api_key=REAL_KEY) as server:
        yield server


@pytest.fixture
async def gateway() -> AsyncIterator[ModelGateway]:
    gw = ModelGateway()
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def limits(max_tokens: int = 100_000, timeout_s: float = 60) -> LoopLimits:
    return LoopLimits(max_iterations=10, max_tokens=max_tokens, deadline=time.monotonic() + timeout_s)


def environ(llm: ScriptedLLM) -> dict[str, str]:
    return {"MODEL_BASE_URL_OVERRIDE": llm.url, "ANTHROPIC_API_KEY": REAL_KEY, "OPENAI_API_KEY": REAL_KEY}


def brain(provider: str = "anthropic") -> Brain:
    return Brain(model="gw-model", provider=provider)  # type: ignore[arg-type]


async def test_anthropic_stream_and_json_pass_through_with_usage(gateway: ModelGateway, llm: ScriptedLLM) -> None:
    llm.set_script([
        {"tool_calls": [{"name": "lookup", "arguments": {"q": "x"}}], "usage": {"input_tokens": 11,
                                                                               "output_tokens": 7}},
        {"text": "done here", "usage": {"input_tokens": 20, "output_tokens": 3}},
    ])
    recorder, totals = Recorder(), LoopResult(text="")
    async with gateway.session(activation_id="a1", brain=brain(), environ=environ(llm), recorder=recorder,
                               totals=totals, limits=limits()) as session:
        client = anthropic.AsyncAnthropic(base_url=session.base_url, api_key=session.token, max_retries=0)
        async with client.messages.stream(model="gw-model", max_tokens=100, messages=[
                {"role": "user", "content": "hi"}]) as stream:
            first = await stream.get_final_message()
        second = await client.messages.create(model="gw-model", max_tokens=100, messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": first.content[0].id, "name": "lookup",
                                                "input": {"q": "x"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[0].id,
                                           "content": "ok"}]}])
        await client.close()
    assert first.content[0].type == "tool_use" and second.content[0].text == "done here"
    assert [(t, r.input_tokens, r.output_tokens, p) for t, r, p in recorder.turns] == [
        (1, 11, 7, "anthropic"), (2, 20, 3, "anthropic")]
    assert recorder.turns[0][1].tool_calls[0].arguments == {"q": "x"}
    assert recorder.turns[1][1].text == "done here"
    assert (totals.input_tokens, totals.output_tokens, totals.iterations) == (31, 10, 2)
    # The upstream saw the real key (it accepts only that one), never the activation token.
    assert not llm.violations
    assert all(session.token not in json.dumps(r.body) and session.token not in r.path for r in llm.requests)


async def test_openai_stream_usage_chunk_and_models(gateway: ModelGateway, llm: ScriptedLLM) -> None:
    llm.set_script([{"text": "streamed answer", "usage": {"input_tokens": 5, "output_tokens": 4}}])
    recorder, totals = Recorder(), LoopResult(text="")
    async with gateway.session(activation_id="a2", brain=brain("openai"), environ=environ(llm), recorder=recorder,
                               totals=totals, limits=limits()) as session, httpx.AsyncClient() as http:
        models = (await http.get(f"{session.base_url}/v1/models")).json()
        body = {"model": "gw-model", "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": "hi"}]}
        async with http.stream("POST", f"{gateway.url}/v1/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {session.token}"}) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert models["data"][0]["id"] == "gw-model"
    assert response.status_code == 200 and lines[-1] == "data: [DONE]"
    text = "".join((json.loads(line[5:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                   for line in lines[:-1])
    assert text == "streamed answer"
    (_turn, reply, provider), = recorder.turns
    assert (reply.text, reply.input_tokens, reply.output_tokens, provider) == ("streamed answer", 5, 4, "openai")


async def test_only_live_tokens_pass(gateway: ModelGateway, llm: ScriptedLLM) -> None:
    recorder, totals = Recorder(), LoopResult(text="")
    body = {"model": "gw-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        async with gateway.session(activation_id="a3", brain=brain(), environ=environ(llm), recorder=recorder,
                                   totals=totals, limits=limits()) as session:
            wrong = await http.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": REAL_KEY})
            tagged_wrong = await http.post(f"{gateway.url}/nope/v1/messages", json=body)
        expired = await http.post(f"{session.base_url}/v1/messages", json=body,
                                  headers={"x-api-key": session.token})
    assert (wrong.status_code, tagged_wrong.status_code, expired.status_code) == (401, 401, 401)
    assert not llm.requests and not recorder.turns


async def test_token_budget_and_deadline_refuse_further_calls(gateway: ModelGateway, llm: ScriptedLLM) -> None:
    llm.set_script([{"text": "big", "usage": {"input_tokens": 80, "output_tokens": 40}}])
    recorder, totals = Recorder(), LoopResult(text="")
    body = {"model": "gw-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        async with gateway.session(activation_id="a4", brain=brain(), environ=environ(llm), recorder=recorder,
                                   totals=totals, limits=limits(max_tokens=100)) as session:
            first = await http.post(f"{session.base_url}/v1/messages", json=body,
                                    headers={"x-api-key": session.token})
            assert session.exceeded.is_set() and session.reason == "max_tokens"
            second = await http.post(f"{session.base_url}/v1/messages", json=body,
                                     headers={"x-api-key": session.token})
        async with gateway.session(activation_id="a5", brain=brain(), environ=environ(llm), recorder=recorder,
                                   totals=LoopResult(text=""), limits=limits(timeout_s=0)) as late:
            third = await http.post(f"{late.base_url}/v1/messages", json=body, headers={"x-api-key": late.token})
    assert first.status_code == 200 and second.status_code == 400 and "max_tokens" in second.text
    assert third.status_code == 400 and late.reason == "timeout"
    assert len(llm.requests) == 1

