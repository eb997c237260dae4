"""Agent memory end to end (issue 19): the runner on real NATS, SeaweedFS, the Hub emulator and the scripted
LLM. ron tells a memory agent a fact in one thread; in a new thread the agent's model request contains it.
Not for an agent without memory; across a runner restart; with two runners; the secret ron pasted is never
stored; memory.enabled false writes nothing; a missing bucket costs the activation nothing but memory."""

from __future__ import annotations

import json
from typing import Any

import pytest

from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from schemas.events import MemoryUsed
from services.runner.offline import rerun_offline
from services.runner.recorded import recording_from
from tests.fixtures.runner import Rig, agent_yaml
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.slow  # SeaweedFS, and a runner per phase

FACT = "the staging database is called marmot-7"
PLANTED = "ghp_" + "Z9" * 14  # a GitHub token shape the runner never read: redacted by pattern
MEMORY_BLOCK = """memory:
  enabled: {enabled}
  remember:
    conversations_with: [ron]
    decisions_made: true
  max_size_mb: 1
  retrieval:
    strategy: {strategy}
    max_context_items: 5
    relevance_threshold: {threshold}
"""


async def add_memory_agent(rig: Rig, name: str, *, enabled: bool = True, strategy: str = "keyword",
                           threshold: float = 0.0) -> None:
    rig.keys[name] = rig.hub.add_agent(name)
    block = MEMORY_BLOCK.format(enabled=str(enabled).lower(), strategy=strategy, threshold=threshold)
    config = agent_yaml(name) + block.encode()
    definition = parse_agent(name, config, b"You are {{name}}. Be brief.")
    kv = await rig.bus.kv(bucket.BUCKET)
    await kv.put(bucket.key("agent", name), bucket.encode(definition))


def memory_env(s3: S3Server, prefix: str) -> dict[str, str]:
    return {"MEMORY_STORE": f"s3://{s3.bucket}/{prefix.rstrip('/')}", "MEMORY_S3_ENDPOINT": s3.endpoint,
            "MEMORY_ACCESS_KEY": s3.access_key, "MEMORY_SECRET_KEY": s3.secret_key}


def bodies(rig: Rig) -> list[str]:
    return [json.dumps(r.body) for r in rig.llm.requests]


def memory_events(events: list[Any], op: str) -> list[MemoryUsed]:
    return [e for e in events if isinstance(e, MemoryUsed) and e.op == op]


def stored(s3: S3Server, prefix: str, agent: str) -> dict[str, str]:
    client = s3.client()
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}memory/{agent}/").get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read().decode() for o in listed}


async def tell_then_ask(rig: Rig, agent: str) -> tuple[list[Any], list[Any]]:
    """ron states the fact in one thread, then asks in a new one; the events of both activations."""
    told = rig.hub.mention(agent, f"remember this: {FACT}. My token is {PLANTED}", sender="ron")
    _, end, first = await rig.activate(agent, [told])
    assert end == "completed"
    asked = rig.hub.mention(agent, "what is the staging database called?", sender="ron")
    _, end, second = await rig.activate(agent, [asked])
    assert end == "completed"
    return first, second


async def test_a_fact_told_in_one_thread_is_in_the_next_threads_request(rig: Rig, s3: S3Server) -> None:
    prefix = s3.new_prefix()
    await add_memory_agent(rig, "mem-agent")
    rig.llm.set_script([
        {"text": "Noted."},
        {"text": '{"kind": "decision", "text": "ron decided staging uses marmot-7"}'},  # the extraction call
        {"text": "It is marmot-7."},
        {"text": "NONE"},
    ])
    await rig.start(None, **memory_env(s3, prefix))
    first, second = await tell_then_ask(rig, "mem-agent")
    (write,) = memory_events(first, "write")
    assert {i.kind for i in write.items} == {"conversation", "decision"} and write.input_tokens > 0
    # The extraction's tokens are the activation's: its metrics count both calls.
    assert first[-1].metrics.iterations == 2
    (retrieve,) = memory_events(second, "retrieve")
    assert any(FACT in i.text for i in retrieve.items) and retrieve.reason is None
    third_request = bodies(rig)[2]
    assert "What you remember" in third_request and FACT in third_request
    # The memory is in the user message (the variable part), not in the cached system prompt.
    assert FACT not in json.dumps(rig.llm.requests[2].body.get("system"))
    objects = stored(s3, prefix, "mem-agent")
    assert len(objects) >= 2 and all(PLANTED not in text for text in objects.values())
    assert any("[REDACTED:github-token]" in text for text in objects.values())
    assert all(PLANTED not in b for b in bodies(rig)[2:])
    # Offline, the recorded retrieval is given again (no store is read); a shadow `memory` block with the
    # threshold at 1.0 would have been given only the best keyword match of them.
    recording = recording_from(second)
    definition = parse_agent("mem-agent", agent_yaml("mem-agent") + MEMORY_BLOCK.format(
        enabled="true", strategy="keyword", threshold=0.0).encode(), b"You are {{name}}. Be brief.")
    report = await rerun_offline(recording, definition, {})
    given = len(memory_events(second, "retrieve")[0].items)
    assert report.followed and any("memory: the recorded retrieval" in n and f"takes {given} of them" in n
                                   for n in report.notes), report.notes
    stricter = parse_agent("mem-agent", agent_yaml("mem-agent") + MEMORY_BLOCK.format(
        enabled="true", strategy="keyword", threshold=1.0).encode(), b"You are {{name}}. Be brief.")
    shadow = await rerun_offline(recording, stricter, {}, baseline=definition, shadow=True)
    assert any("takes 1 of them" in n for n in shadow.notes)  # the best keyword match is 1.0: still kept


async def test_no_memory_without_the_block_nor_when_disabled(rig: Rig, s3: S3Server) -> None:
    prefix = s3.new_prefix()
    await rig.add_agent("plain-agent")
    await add_memory_agent(rig, "off-agent", enabled=False)
    rig.llm.set_script([{"text": "Noted."}, {"text": "No idea."}, {"text": "Noted."}, {"text": "No idea."}])
    await rig.start(None, **memory_env(s3, prefix))
    for agent in ("plain-agent", "off-agent"):
        first, second = await tell_then_ask(rig, agent)
        assert not memory_events(first + second, "write") and not memory_events(first + second, "retrieve")
        assert stored(s3, prefix, agent) == {}
    assert all(FACT not in b for b in (bodies(rig)[1], bodies(rig)[3]))


async def test_memory_survives_a_runner_restart_and_is_shared_by_two_runners(rig: Rig, s3: S3Server) -> None:
    prefix = s3.new_prefix()
    await add_memory_agent(rig, "mem-restart", strategy="embedding_search", threshold=0.6)
    rig.llm.set_script([{"text": "Noted."}, {"text": "NONE"}])
    await rig.start(None, **memory_env(s3, prefix))
    told = rig.hub.mention("mem-restart", f"remember this: {FACT}", sender="ron")
    await rig.activate("mem-restart", [told])
    await rig.close()
    # A new runner process state (and a second runner beside it): both read what the first one wrote.
    second = Rig(rig.bus, rig.nats_url, rig.hub, rig.llm)
    second.keys = dict(rig.keys)
    rig.stop.clear()
    rig.llm.set_script([{"text": "marmot-7"}, {"text": "NONE"}, {"text": "marmot-7"}, {"text": "NONE"}])
    try:
        await rig.start(None, **memory_env(s3, prefix))
        await second.start(None, **memory_env(s3, prefix))
        for _ in range(2):
            asked = rig.hub.mention("mem-restart", "what is the staging database called?", sender="ron")
            _, _, events = await rig.activate("mem-restart", [asked])
            (retrieve,) = memory_events(events, "retrieve")
            assert any(FACT in i.text for i in retrieve.items), retrieve
        assert sum(FACT in b for b in bodies(rig)[2:]) == 2
    finally:
        await second.close()


async def test_a_missing_bucket_means_no_memory_and_a_reason(rig: Rig, s3: S3Server) -> None:
    await add_memory_agent(rig, "mem-nobucket")
    rig.llm.set_script([{"text": "Noted."}, {"text": "NONE"}])
    env = memory_env(s3, "x/") | {"MEMORY_STORE": "s3://no-such-bucket-here"}
    await rig.start(None, **env)
    told = rig.hub.mention("mem-nobucket", f"remember this: {FACT}", sender="ron")
    _, end, events = await rig.activate("mem-nobucket", [told])
    assert end == "completed" and rig.replies_by("mem-nobucket", told.post_id)
    (retrieve,) = memory_events(events, "retrieve")
    assert retrieve.reason and "store unavailable" in retrieve.reason and not retrieve.items
    (write,) = memory_events(events, "write")
    assert write.reason and not write.items
