"""Model clients are built once per runner process and endpoint (issue 18): every activation on one endpoint
and key shares one HTTP client (its pool and TLS context), a rotated key gets its own, an activation's
`aclose` leaves the shared client open, and the runner closes them all at shutdown. Against the scripted LLM."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from botburrow.doubles.scripted_llm import ScriptedLLM
from schemas.agent import Brain
from services.runner import providers
from services.runner.modelaccess import ModelAccess
from services.runner.seams import ModelClients, ProviderModels
from services.runner.transcript import UserText

SONNET = "claude-sonnet-4-20250514"


def closed(client: Any) -> bool:
    """The Anthropic SDK's `is_closed()` is a method, httpx's `is_closed` a property."""
    state = client.is_closed
    return bool(state() if callable(state) else state)


def open_model(clients: ModelClients, access: ModelAccess, brain: Brain,
               secrets: Mapping[str, str]) -> providers.AnthropicModel | providers.OpenAIModel:
    return providers.model_for(brain, access, secrets, timeout_s=30, clients=clients)


async def test_activations_share_one_client_per_endpoint_and_key(scripted_llm: ScriptedLLM) -> None:
    access = ModelAccess(base_url_override=scripted_llm.url)
    clients = ModelClients()
    secrets = {"ANTHROPIC_API_KEY": f"sk-ant-{uuid.uuid4().hex}"}
    scripted_llm.set_script([{"text": "one"}, {"text": "two"}, {"text": "three"}])

    first = open_model(clients, access, Brain(model=SONNET), secrets)
    second = open_model(clients, access, Brain(model="claude-haiku-4-5", temperature=0.2), secrets)
    assert first._client is second._client and len(clients) == 1  # two agents, one endpoint and key
    for model in (first, second):
        reply = await model.complete("sys", [UserText("hi")], [])
        assert reply.text in ("one", "two")
        await model.aclose()  # the activation's end: the shared client stays open for the next
    assert not closed(first._client)

    rotated = open_model(clients, access, Brain(model=SONNET), {"ANTHROPIC_API_KEY": f"sk-ant-{uuid.uuid4().hex}"})
    assert rotated._client is not first._client and len(clients) == 2
    assert (await rotated.complete("sys", [UserText("hi")], [])).text == "three"
    # The pool is keyed by a hash of the key, never the key itself.
    assert not any(secrets["ANTHROPIC_API_KEY"] in str(identity) for identity in clients._clients)

    models = ProviderModels(clients)
    await models.aclose()  # the runner's shutdown
    assert closed(first._client) and closed(rotated._client) and len(clients) == 0


async def test_an_openai_endpoint_shares_its_client_too(scripted_llm: ScriptedLLM) -> None:
    access = ModelAccess(base_url_override=scripted_llm.url)
    clients = ModelClients()
    brain = Brain(provider="openai", model="gpt-4o-mini", api_base="https://example.invalid/v1",
                  api_key_env="OPENAI_API_KEY")
    secrets = {"OPENAI_API_KEY": f"sk-{uuid.uuid4().hex}"}
    scripted_llm.set_script([{"text": "a"}, {"text": "b"}])
    models = [open_model(clients, access, brain, secrets) for _ in range(2)]
    assert models[0]._client is models[1]._client and len(clients) == 1
    assert [(await m.complete("sys", [UserText("hi")], [])).text for m in models] == ["a", "b"]
    await clients.aclose()
    assert closed(models[0]._client)
