"""One request budget per Hub, shared by every process through the real KV bucket `hub-budget`.

Two "processes" are two NATS connections, each with its own KvRequestBudget and HubClient. Time is a
fake clock whose sleep advances it: no test sleeps."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest

from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.hub import HubClient, HubRateLimited
from botburrow.hub.breaker import breaker_for
from botburrow.hub.budget import BUCKET, KvRequestBudget, MemoryRequestBudget, Rule, Window, observed, scope_of
from botburrow.hub.connect import budget_terms, hub_client_for_stage
from botburrow.runtime.bus import Bus
from botburrow.settings import IngestSettings, load


class Clock:
    """Wall-clock stand-in shared by the processes of a test; `sleep` moves it on."""

    def __init__(self) -> None:
        self.now_s = 1_800_000_000.0
        self.slept_s: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.slept_s.append(seconds)
        self.now_s += seconds


@pytest.fixture
async def second_bus(nats_url: str, bus: Bus) -> AsyncIterator[Bus]:
    other = await Bus.connect(nats_url, name=f"test-other-{uuid.uuid4().hex[:6]}")
    try:
        yield other
    finally:
        await other.close()


def hub_url() -> str:
    return f"http://hub-{uuid.uuid4().hex[:8]}.test"  # a scope of its own in the shared bucket


async def budgets(first: Bus, second: Bus, url: str, clock: Clock, **kwargs: object) -> list[KvRequestBudget]:
    return [KvRequestBudget(await b.kv(BUCKET), url, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]
            for b in (first, second)]


# --- the rule, in one process -----------------------------------------------------------------

async def test_foreground_spends_the_limit_then_waits_for_the_oldest_grant() -> None:
    clock = Clock()
    budget = MemoryRequestBudget("http://hub.test", limit_per_min=5, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        await budget.acquire("k", max_wait_s=0)
    with pytest.raises(HubRateLimited) as spent:
        await budget.acquire("k", max_wait_s=10)
    assert spent.value.code == "BUDGET_SPENT" and spent.value.retry_after_s == pytest.approx(61.0)
    await budget.acquire("k", max_wait_s=61.0)  # within the bound: waited on the clock
    assert clock.slept_s == [pytest.approx(61.0)]


async def test_background_stops_at_the_reserve_foreground_does_not() -> None:
    clock = Clock()
    budget = MemoryRequestBudget("http://hub.test", limit_per_min=10, clock=clock, sleep=clock.sleep)
    assert Rule(limit=10).reserve(10) == 2
    for _ in range(8):
        await budget.acquire("k", background=True, max_wait_s=0)
    with pytest.raises(HubRateLimited):
        await budget.acquire("k", background=True, max_wait_s=0)
    await budget.acquire("k", max_wait_s=0)
    await budget.acquire("k", max_wait_s=0)  # the reserve is the foreground's
    with pytest.raises(HubRateLimited):
        await budget.acquire("k", max_wait_s=0)


async def test_per_key_budgets_are_apart_and_store_no_key() -> None:
    clock = Clock()
    budget = MemoryRequestBudget("http://hub.test", per="key", limit_per_min=1, clock=clock, sleep=clock.sleep)
    await budget.acquire("key-of-one", max_wait_s=0)
    await budget.acquire("key-of-two", max_wait_s=0)
    with pytest.raises(HubRateLimited):
        await budget.acquire("key-of-one", max_wait_s=0)
    assert "key-of-one" not in scope_of("http://hub.test", "key-of-one", "key")


def test_a_skewed_grant_counts_a_margin_longer() -> None:
    rule = Rule(limit=1, skew_margin_s=1.0)
    window = Window(granted_s=[1000.0])
    assert rule.decide(window, 1060.5, background=False).granted is None  # past 60 s, not past 61
    assert rule.decide(window, 1061.5, background=False).granted is not None


def test_no_limit_known_grants_with_nothing_to_record_and_the_teaching_answer_counts() -> None:
    rule = Rule()
    window = Window()
    assert rule.decide(window, 0.0, background=True).granted is window  # no write: no KV round trip
    learnt = observed(window, 5.0, limit=1, retry_after_s=None)
    assert learnt == Window(learned_limit=1, granted_s=[5.0])
    assert rule.decide(learnt, 6.0, background=False).granted is None


# --- shared through real NATS KV ----------------------------------------------------------------

async def test_two_processes_share_one_budget_under_contention(bus: Bus, second_bus: Bus) -> None:
    clock = Clock()
    first, second = await budgets(bus, second_bus, hub_url(), clock, limit_per_min=10)

    async def one(budget: KvRequestBudget) -> bool:
        try:
            await budget.acquire("any-key", max_wait_s=0)
        except HubRateLimited:
            return False
        return True

    granted = await asyncio.gather(*(one(b) for _ in range(15) for b in (first, second)))
    assert sum(granted) == 10  # compare-and-set: not one grant more across both connections
    assert len((await second.snapshot()).granted_s) == 10


async def test_retry_after_seen_by_one_process_is_honoured_by_the_other(
        bus: Bus, second_bus: Bus, hub_emulator: HubEmulator) -> None:
    key = hub_emulator.add_agent("helper")
    clock = Clock()
    first, second = await budgets(bus, second_bus, hub_emulator.url, clock)
    runner = HubClient(hub_emulator.url, budget=first, budget_wait_s=5.0)
    ingest = HubClient(hub_emulator.url, budget=second, background=True, budget_wait_s=5.0)
    try:
        hub_emulator.set_fault(status=429, count=1, retry_after_s=30)
        with pytest.raises(HubRateLimited) as first_seen:
            await runner.me(key)
        assert first_seen.value.code == "BUDGET_SPENT"  # it waits no 30 s: it says when to ask again
        with pytest.raises(HubRateLimited) as other:
            await ingest.me(key)
        assert other.value.code == "BUDGET_SPENT" and other.value.retry_after_s == pytest.approx(30.0, abs=0.5)
        assert [r.status for r in hub_emulator.requests.matching()] == [429]  # the other never asked
        clock.now_s += 30.5
        assert (await ingest.me(key)).name == "helper"
    finally:
        await runner.aclose()
        await ingest.aclose()


async def test_a_per_address_limit_is_kept_by_two_processes_on_the_moltbook_profile(
        bus: Bus, second_bus: Bus) -> None:
    """The Hub counts 6 requests a minute per client address; the shared budget of 6 never meets its 429."""
    emulator = HubEmulator(profile="moltbook", limits={"requests": (6, 60.0)})
    await emulator.start()
    clock = Clock()
    try:
        keys = [emulator.add_agent(name) for name in ("one_bot", "two_bot")]
        first, second = await budgets(bus, second_bus, emulator.url, clock, limit_per_min=6)
        clients = [HubClient(emulator.url, budget=b, budget_wait_s=1.0) for b in (first, second)]
        try:
            for i in range(6):
                await clients[i % 2].me(keys[i % 2])
            for client, key in zip(clients, keys, strict=True):
                with pytest.raises(HubRateLimited) as spent:
                    await client.me(key)
                assert spent.value.code == "BUDGET_SPENT"
        finally:
            for client in clients:
                await client.aclose()
        statuses = [r.status for r in emulator.requests.matching()]
        assert statuses == [200] * 6  # no 429: the budget held the seventh back in both processes
    finally:
        await emulator.stop()


async def test_the_hubs_limit_header_is_learnt_once_for_all(bus: Bus, second_bus: Bus) -> None:
    emulator = HubEmulator(profile="moltbook", limits={"requests": (3, 60.0)})
    await emulator.start()
    clock = Clock()
    try:
        key = emulator.add_agent("one_bot")
        first, second = await budgets(bus, second_bus, emulator.url, clock)  # no setting: learn the header
        client = HubClient(emulator.url, budget=first, budget_wait_s=0.0)
        other = HubClient(emulator.url, budget=second, budget_wait_s=0.0)
        try:
            await client.me(key)
            assert (await second.snapshot()).learned_limit == 3
            await other.me(key)
            await other.me(key)
            with pytest.raises(HubRateLimited) as spent:
                await client.me(key)
            assert spent.value.code == "BUDGET_SPENT"
        finally:
            await client.aclose()
            await other.aclose()
        assert [r.status for r in emulator.requests.matching()] == [200, 200, 200]
    finally:
        await emulator.stop()


# --- hub_client_for_stage: what a stage builds ----------------------------------------------------

def hub_settings(url: str, **env: str) -> IngestSettings:
    return load(IngestSettings, {"HUB_URL": url, **env})


def test_budget_terms_follow_the_profile_and_the_setting() -> None:
    assert budget_terms("moltbook") == ("address", 100)
    assert budget_terms("moltbook", 40) == ("address", 40)
    assert budget_terms("botburrow") == ("key", 0)
    assert budget_terms("unknown") == ("address", 0)


async def test_auto_detects_a_moltbook_hub_and_spends_per_address(bus: Bus) -> None:
    emulator = HubEmulator(profile="moltbook")
    await emulator.start()
    try:
        hub = await hub_client_for_stage(hub_settings(emulator.url), bus, background=True)
        try:
            assert isinstance(hub.budget, KvRequestBudget)
            assert (hub.budget.per, hub.budget.rule.limit, hub.background) == ("address", 100, True)
            assert hub.breaker is breaker_for(emulator.url)
            key = emulator.add_agent("one_bot")
            assert (await hub.me(key)).name == "one_bot"
            assert len((await hub.budget.snapshot()).granted_s) == 1  # the call (the start probe came before)
        finally:
            await hub.aclose()
    finally:
        await emulator.stop()


async def test_a_configured_profile_and_limit_need_no_probe(bus: Bus, hub_emulator: HubEmulator) -> None:
    settings = hub_settings(hub_emulator.url, HUB_PROFILE="botburrow", HUB_REQUESTS_PER_MINUTE="30")
    hub = await hub_client_for_stage(settings, bus)
    try:
        assert isinstance(hub.budget, KvRequestBudget)
        assert (hub.budget.per, hub.budget.rule.limit, hub.background) == ("key", 30, False)
    finally:
        await hub.aclose()
    assert hub_emulator.requests.matching() == []


async def test_a_hub_down_at_start_is_budgeted_per_address_with_no_limit(bus: Bus) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    hub = await hub_client_for_stage(hub_settings(url), bus, breaker_cooldown_s=1.0)
    try:
        assert isinstance(hub.budget, KvRequestBudget)
        assert (hub.budget.per, hub.budget.rule.limit) == ("address", 0)
    finally:
        await hub.aclose()


async def test_a_readiness_probe_spends_the_budget_and_is_not_sent_without_it(hub_emulator: HubEmulator) -> None:
    clock = Clock()
    budget = MemoryRequestBudget(hub_emulator.url, limit_per_min=2, clock=clock, sleep=clock.sleep)
    hub = HubClient(hub_emulator.url, budget=budget)
    try:
        assert await hub.probe() is True  # 1 of 2; a background caller leaves the last one
        assert await hub.probe() is True  # not sent: the last answer stands
        assert len(hub_emulator.requests.matching("/api/v1/agents/me")) == 1
    finally:
        await hub.aclose()


async def test_one_agents_write_limit_does_not_block_the_shared_budget(bus: Bus) -> None:
    """Moltbook's 1 post per 30 min answers 429 with Retry-After ~1800: that agent's, not everyone's."""
    emulator = HubEmulator(profile="moltbook")
    await emulator.start()
    try:
        keys = [emulator.add_agent(name) for name in ("one_bot", "two_bot")]
        budget = KvRequestBudget(await bus.kv(BUCKET), emulator.url, limit_per_min=100)
        hub = HubClient(emulator.url, budget=budget, budget_wait_s=0.0)
        try:
            await hub.me(keys[0])  # a read: learns the overall limit the reads carry
            await hub.create_post(keys[0], "general", "first", "x")
            with pytest.raises(HubRateLimited) as limited:
                await hub.create_post(keys[0], "general", "second", "x")
            assert limited.value.retry_after_s is not None and limited.value.retry_after_s > 60
            assert limited.value.code != "BUDGET_SPENT"
            assert (await budget.snapshot()).blocked_until_s == 0.0
            assert (await hub.me(keys[1])).name == "two_bot"  # the other agent goes on at once
        finally:
            await hub.aclose()
    finally:
        await emulator.stop()
