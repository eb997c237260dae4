"""The model gateway between a real client and the scripted LLM: tokens, keys, streaming, usage, limits."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import pytest

from botburrow.doubles.scripted_llm import ScriptedLLM
from schemas.agent import Brain
from services.runner.executors.claude import ClaudeCode
from services.runner.gateway import ModelGateway
from services.runner.loop import Budget, ToolOutcome
from services.runner.modelaccess import ModelAccess, ModelAccessRefused
from services.runner.transcript import ModelReply, ToolCall

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


def limits(max_tokens: int = 100_000, timeout_s: float = 60, spent: int = 0) -> Budget:
    return Budget(max_iterations=10, max_tokens=max_tokens, deadline=time.monotonic() + timeout_s, input_tokens=spent)


def access(env: dict[str, str]) -> dict[str, Any]:
    """The session's model access: the operator's settings (here, the override) and where keys are read."""
    return {"access": ModelAccess(base_url_override=env.get("MODEL_BASE_URL_OVERRIDE", "")), "secret_env": env}


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
    recorder, totals = Recorder(), limits()
    async with gateway.session(activation_id="a1", brain=brain(), **access(environ(llm)), recorder=recorder,
                               budget=totals) as session:
        # Any: the SDK's message-param and content-block unions are beside the point of a gateway test.
        client: Any = anthropic.AsyncAnthropic(base_url=session.base_url, api_key=session.token, max_retries=0)
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
    recorder, totals = Recorder(), limits()
    async with gateway.session(activation_id="a2", brain=brain("openai"), **access(environ(llm)), recorder=recorder,
                               budget=totals) as session, httpx.AsyncClient() as http:
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
    recorder, totals = Recorder(), limits()
    body = {"model": "gw-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        async with gateway.session(activation_id="a3", brain=brain(), **access(environ(llm)), recorder=recorder,
                                   budget=totals) as session:
            wrong = await http.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": REAL_KEY})
            tagged_wrong = await http.post(f"{gateway.url}/nope/v1/messages", json=body)
        expired = await http.post(f"{session.base_url}/v1/messages", json=body,
                                  headers={"x-api-key": session.token})
    assert (wrong.status_code, tagged_wrong.status_code, expired.status_code) == (401, 401, 401)
    assert not llm.requests and not recorder.turns


async def test_token_budget_and_deadline_refuse_further_calls(gateway: ModelGateway, llm: ScriptedLLM) -> None:
    llm.set_script([{"text": "big", "usage": {"input_tokens": 80, "output_tokens": 40}}])
    recorder, totals = Recorder(), limits(max_tokens=100)
    body = {"model": "gw-model", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        async with gateway.session(activation_id="a4", brain=brain(), **access(environ(llm)), recorder=recorder,
                                   budget=totals) as session:
            first = await http.post(f"{session.base_url}/v1/messages", json=body,
                                    headers={"x-api-key": session.token})
            assert session.exceeded.is_set() and session.reason == "max_tokens"
            second = await http.post(f"{session.base_url}/v1/messages", json=body,
                                     headers={"x-api-key": session.token})
        async with gateway.session(activation_id="a5", brain=brain(), **access(environ(llm)), recorder=recorder,
                                   budget=limits(timeout_s=0)) as late:
            third = await http.post(f"{late.base_url}/v1/messages", json=body, headers={"x-api-key": late.token})
    assert first.status_code == 200 and second.status_code == 400 and "max_tokens" in second.text
    assert third.status_code == 400 and late.reason == "timeout"
    assert len(llm.requests) == 1



def small_brain(provider: str = "anthropic", max_tokens: int | None = None) -> Brain:
    return Brain(model="gw-model", provider=provider, max_tokens=max_tokens)  # type: ignore[arg-type]


async def test_only_the_configured_model_and_the_clis_housekeeping_models_pass(
        gateway: ModelGateway, llm: ScriptedLLM) -> None:
    """A CLI (or whatever runs in the sandbox) asking for another model gets a provider-shaped refusal."""
    llm.set_script([{"text": "main"}, {"text": "title"}, {"text": "oai"}])
    (small, *_) = ClaudeCode.housekeeping_models
    recorder, totals = Recorder(), limits()
    async with gateway.session(activation_id="m1", brain=brain(), **access(environ(llm)), recorder=recorder,
                               budget=totals,
                               housekeeping_models=ClaudeCode.housekeeping_models) as session:
        # Any: the SDK's message-param and content-block unions are beside the point of a gateway test.
        client: Any = anthropic.AsyncAnthropic(base_url=session.base_url, api_key=session.token, max_retries=0)
        user = [{"role": "user", "content": "hi"}]
        main = await client.messages.create(model="gw-model", max_tokens=100, messages=user)
        title = await client.messages.create(model=small, max_tokens=100, messages=user)
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(model="claude-opus-4-1-20250805", max_tokens=100, messages=user)
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.count_tokens(model="claude-opus-4-1-20250805", messages=user)
        await client.close()
        async with httpx.AsyncClient() as http:
            headers = {"Authorization": f"Bearer {session.token}"}
            chat = {"messages": user, "max_tokens": 10}
            oai_refused = await http.post(f"{session.base_url}/v1/chat/completions", headers=headers,
                                          json={**chat, "model": "gpt-4.1"})
            no_model = await http.post(f"{session.base_url}/v1/chat/completions", headers=headers, json=chat)
            not_json = await http.post(f"{session.base_url}/v1/chat/completions", headers=headers, content=b"[1]")
            odd_model = await http.post(f"{session.base_url}/v1/chat/completions", headers=headers,
                                        json={**chat, "model": ["gw-model"]})
            deep = await http.post(f"{session.base_url}/v1/chat/completions", headers=headers,
                                   content=b'{"model": "gw-model", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
            oai_ok = await http.post(f"{session.base_url}/v1/chat/completions", headers=headers,
                                     json={**chat, "model": "gw-model"})
    assert (main.content[0].text, title.content[0].text) == ("main", "title")
    assert refused.value.status_code == 400
    refused_body: Any = refused.value.body  # the JSON the gateway answered (the SDK types it `object`)
    assert refused_body["error"] == {"type": "invalid_request_error", "message":
        "model 'claude-opus-4-1-20250805' is not allowed for this activation "
        f"(allowed: {', '.join(sorted({'gw-model', *ClaudeCode.housekeeping_models}))})"}
    assert oai_refused.status_code == 400 and "'gpt-4.1' is not allowed" in oai_refused.json()["error"]["message"]
    assert no_model.status_code == 400 and "'None' is not allowed" in no_model.json()["error"]["message"]
    assert not_json.status_code == 400 and "not a JSON object" in not_json.json()["error"]["message"]
    assert odd_model.status_code == 400 and "is not allowed" in odd_model.json()["error"]["message"]
    assert deep.status_code == 400 and "not a JSON object" in deep.json()["error"]["message"]
    assert oai_ok.status_code == 200
    assert [r.model for r in llm.requests] == ["gw-model", small, "gw-model"]  # nothing refused went upstream
    assert len(recorder.turns) == 3


async def _sent(gateway: ModelGateway, llm: ScriptedLLM, brain_: Brain, body: dict[str, Any], *,
                budget: int = 100_000, spent: int = 0) -> dict[str, Any]:
    """The body the upstream received for `body` sent through a session of `brain_`."""
    llm.set_script([{"text": "ok"}])
    totals = limits(max_tokens=budget, spent=spent)
    path = "messages" if brain_.provider == "anthropic" else "chat/completions"
    async with gateway.session(activation_id="c", brain=brain_, **access(environ(llm)), recorder=Recorder(),
                               budget=totals) as session, httpx.AsyncClient() as http:
        response = await http.post(f"{session.base_url}/v1/{path}", headers={"x-api-key": session.token},
                                   json={"model": "gw-model", "messages": [{"role": "user", "content": "hi"}], **body})
    assert response.status_code == 200, response.text
    return llm.requests[-1].body


THINKING: dict[str, Any] = {"type": "enabled", "budget_tokens": 31999}


@pytest.mark.parametrize(("config_max", "budget", "spent", "asked", "sent_max", "sent_thinking"), [
    (None, 100_000, 0, 32000, 32000, 31999),  # nothing to clamp: Claude Code's own request
    (16000, 100_000, 0, 32000, 16000, 15999),  # the config's max_tokens (claude-coder-1), thinking fitted
    (4000, 100_000, 0, 100, 100, None),  # asking for less than the cap is left alone
    (None, 10_000, 9_500, 32000, 500, None),  # the budget left: too little to think
    (4000, 10_000, 7_000, 32000, 3000, 2999),
])
async def test_anthropic_max_tokens_is_clamped_to_the_config_and_the_budget(
        gateway: ModelGateway, llm: ScriptedLLM, config_max: int | None, budget: int, spent: int, asked: int,
        sent_max: int, sent_thinking: int | None) -> None:
    body = {"max_tokens": asked} | ({"thinking": THINKING} if asked > THINKING["budget_tokens"] else {})
    sent = await _sent(gateway, llm, small_brain(max_tokens=config_max), body, budget=budget, spent=spent)
    assert sent["max_tokens"] == sent_max
    assert (sent.get("thinking") or {}).get("budget_tokens") == sent_thinking


@pytest.mark.parametrize(("config_max", "budget", "spent", "body", "sent"), [
    (256, 100_000, 0, {"max_tokens": 8192}, {"max_tokens": 256}),
    (256, 100_000, 0, {"max_completion_tokens": 8192}, {"max_completion_tokens": 256}),
    (256, 100_000, 0, {}, {"max_tokens": 256}),  # absent = the model's maximum: capped by the config
    (None, 100_000, 0, {}, {}),  # absent and no config cap: the model's own limit applies
    (None, 10_000, 9_000, {}, {"max_tokens": 1000}),  # ... unless the budget is nearly spent
    (None, 10_000, 9_000, {"max_tokens": 8192}, {"max_tokens": 1000}),
])
async def test_openai_max_tokens_is_clamped_to_the_config_and_the_budget(
        gateway: ModelGateway, llm: ScriptedLLM, config_max: int | None, budget: int, spent: int,
        body: dict[str, Any], sent: dict[str, Any]) -> None:
    got = await _sent(gateway, llm, small_brain("openai", config_max), {**body, "n": 4}, budget=budget, spent=spent)
    assert {k: got[k] for k in ("max_tokens", "max_completion_tokens") if k in got} == sent
    assert got["n"] == 1  # one answer: four would spend four times the output budget


async def test_a_config_naming_the_hub_key_gets_no_session(gateway: ModelGateway, llm: ScriptedLLM) -> None:
    hostile = Brain(model="gw-model", provider="openai", api_base=f"{llm.url}/v1", api_key_env="HUB_API_KEY")
    planted = {**environ(llm), "MODEL_BASE_URL_OVERRIDE": "", "HUB_API_KEY": "hub-system-key-planted-0123"}
    with pytest.raises(ModelAccessRefused, match="HUB_API_KEY is not a model key"):
        async with gateway.session(activation_id="h", brain=hostile, **access(planted), recorder=Recorder(),
                                   budget=limits()):
            raise AssertionError("no session for it")
    assert llm.requests == []
