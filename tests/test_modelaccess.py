"""Model keys and endpoints (issue 14): a config names only the operator's model keys and endpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from botburrow.definitions.parse import parse_agent
from botburrow.settings import RunnerSettings, SettingsError, load
from schemas.agent import Brain
from services.runner.modelaccess import Endpoint, ModelAccess, ModelAccessRefused, base_allowed

PUBLISHED = Path(__file__).parent / "data" / "published-agent-definitions" / "agents"
DEFAULT_BASES = ("https://api.anthropic.com", "https://api.openai.com/v1")


def check(brain: Brain, environ: dict[str, str]) -> None:
    """`brain` checked against the runner's settings in `environ` (secrets read from it too)."""
    ModelAccess.from_settings(load(RunnerSettings, {**environ, "HUB_URL": "http://hub"})).check(brain)


def resolve(brain: Brain, environ: dict[str, str]) -> Endpoint:
    return ModelAccess.from_settings(load(RunnerSettings, {**environ, "HUB_URL": "http://hub"})).resolve(brain, environ)


def published() -> list[tuple[str, Brain]]:
    return [(p.parent.name, parse_agent(p.parent.name, p.read_bytes(), b"").config.brain)
            for p in sorted(PUBLISHED.glob("*/config.yaml"))]


@pytest.mark.parametrize(("name", "brain"), published())
def test_published_definitions_keep_working_with_the_default_lists(name: str, brain: Brain) -> None:
    environ = {"ANTHROPIC_API_KEY": "sk-ant-operator-0123456789", "OPENAI_API_KEY": "sk-openai-operator-0123456789"}
    check(brain, environ)
    endpoint = resolve(brain, environ)
    assert endpoint.base_url in DEFAULT_BASES and endpoint.key in environ.values()


def test_sprint_coder_reaches_openai_with_the_openai_key() -> None:
    (brain,) = [b for name, b in published() if name == "sprint-coder"]
    endpoint = resolve(brain, {"OPENAI_API_KEY": "sk-openai-operator-0123456789", "HUB_API_KEY": "hub-system-key-01"})
    assert (endpoint.protocol, endpoint.base_url, endpoint.key) == (
        "openai", "https://api.openai.com/v1", "sk-openai-operator-0123456789")


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://api.openai.com/v1", True),
    ("https://api.openai.com/v1/", True),
    ("https://API.OpenAI.com/v1", True),  # host names are case-insensitive
    ("https://api.openai.com:443/v1", True),
    ("https://api.openai.com/v1/chat", True),  # below an allowed base: the same server
    ("https://api.anthropic.com/v1", True),
    ("https://api.openai.com/v10", False),  # a path boundary, not a prefix
    ("https://api.openai.com", False),  # above the allowed path
    ("http://api.openai.com/v1", False),  # not TLS
    ("https://api.openai.com:8443/v1", False),
    ("https://api.openai.com.evil.example/v1", False),
    ("https://api.openai.com@evil.example/v1", False),  # userinfo: the host is evil.example
    ("https://user:pw@api.openai.com/v1", False),
    ("https://api.openai.com/v1?x=https://api.openai.com/v1", False),
    ("ftp://api.openai.com/v1", False),
    ("not a url", False),
    ("https://[::1/v1", False),
])
def test_endpoint_matching(url: str, allowed: bool) -> None:
    assert base_allowed(url, DEFAULT_BASES) is allowed


@pytest.mark.parametrize("key_env", ["HUB_API_KEY", "R2_SECRET_KEY", "R2_ACCESS_KEY", "NATS_CREDS",
                                     "GITHUB_PERSONAL_ACCESS_TOKEN", "BRAVE_API_KEY", "BOTBURROW_AGENT_KEYS"])
def test_never_a_credential_of_the_product_whatever_the_operator_lists(key_env: str) -> None:
    brain = Brain(model="m", provider="openai", api_base="https://api.openai.com/v1", api_key_env=key_env)
    environ = {key_env: "a-planted-secret-value-0123", "MODEL_KEY_ENVS": f"OPENAI_API_KEY,{key_env}"}
    with pytest.raises(ModelAccessRefused, match=f"{key_env} is not a model key"):
        resolve(brain, {**environ, "MODEL_KEY_ENVS": "OPENAI_API_KEY"})
    with pytest.raises(SettingsError, match=f"{key_env} is not a model key"):
        load(RunnerSettings, {**environ, "HUB_URL": "http://hub"})


def test_the_operator_can_add_a_model_key_and_an_endpoint() -> None:
    brain = Brain(model="m", provider="openai", api_base="https://llm.internal.example/v1", api_key_env="GROQ_API_KEY")
    environ = {"GROQ_API_KEY": "gsk-operator-0123456789"}
    with pytest.raises(ModelAccessRefused, match="GROQ_API_KEY is not a model key"):
        check(brain, environ)
    environ["MODEL_KEY_ENVS"] = "OPENAI_API_KEY,GROQ_API_KEY"
    refused = re.escape("https://llm.internal.example/v1 is not an allowed model endpoint")
    with pytest.raises(ModelAccessRefused, match=refused):
        check(brain, environ)
    environ["MODEL_API_BASES"] = "https://llm.internal.example/v1"
    assert resolve(brain, environ).key == "gsk-operator-0123456789"
    settings = load(RunnerSettings, {**environ, "HUB_URL": "http://hub"})
    assert settings.model_api_bases == ("https://llm.internal.example/v1",)
    assert settings.model_key_envs == frozenset({"OPENAI_API_KEY", "GROQ_API_KEY"})


def test_local_mode_sends_everything_to_the_override_and_anthropic_base_url_is_the_operators() -> None:
    brain = Brain(model="m", provider="openai", api_base="https://anywhere.example/v1")
    local = resolve(brain, {"MODEL_BASE_URL_OVERRIDE": "http://127.0.0.1:9999"})
    assert (local.base_url, local.key) == ("http://127.0.0.1:9999/v1", "local-mode-no-key")
    with pytest.raises(ModelAccessRefused):
        check(brain, {})
    anthropic = Brain(model="m", provider="anthropic")
    proxy = {"ANTHROPIC_BASE_URL": "https://proxy.internal.example", "ANTHROPIC_API_KEY": "sk-ant-operator-01234"}
    assert resolve(anthropic, proxy).base_url == "https://proxy.internal.example"
    hostile = Brain(model="m", provider="anthropic", api_base="https://evil.example")
    with pytest.raises(ModelAccessRefused, match=re.escape("https://evil.example is not an allowed model endpoint")):
        resolve(hostile, proxy)


def test_bad_lists_are_refused_at_start() -> None:
    for name, value in (("MODEL_KEY_ENVS", "openai_api_key"), ("MODEL_API_BASES", "api.openai.com/v1")):
        with pytest.raises(SettingsError, match=name):
            load("runner", {name: value, "HUB_URL": "http://hub"})
