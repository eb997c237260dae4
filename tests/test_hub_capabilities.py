"""The Hub's capabilities are detected, not assumed: against the real emulator over HTTP, both profiles."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.hub import HubClient, HubEndpointMissing
from botburrow.hub.capabilities import ALL_PRESENT, CapabilityTracker, HubCapabilities, detect_capabilities

SYSTEM_KEY = "caps-system-key-0001"


@pytest.fixture
async def moltbook_emulator() -> AsyncIterator[HubEmulator]:
    emulator = HubEmulator(system_key=SYSTEM_KEY, profile="moltbook")
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


async def test_a_botburrow_hub_serves_everything(hub_emulator: HubEmulator) -> None:
    key = hub_emulator.add_agent("helper")
    hub = HubClient(hub_emulator.url, system_key=hub_emulator.system_key)
    try:
        caps = await detect_capabilities(hub, key, webhooks_enabled=True)
        # Without an agent key the notifications route still answers (401): it exists.
        keyless = await detect_capabilities(hub, None, webhooks_enabled=False)
    finally:
        await hub.aclose()
    assert caps == HubCapabilities(notifications=True, mark_read=True, dms=True, system=True, webhooks=True,
                                   profile="botburrow")
    assert keyless.notifications and keyless.profile == "botburrow" and not keyless.webhooks


async def test_without_a_system_key_system_is_absent(hub_emulator: HubEmulator) -> None:
    key = hub_emulator.add_agent("helper")
    hub = HubClient(hub_emulator.url)
    try:
        caps = await detect_capabilities(hub, key, webhooks_enabled=False)
    finally:
        await hub.aclose()
    assert caps.notifications and not caps.system
    assert hub_emulator.requests.matching("/api/v1/system") == []  # not even asked


async def test_a_moltbook_hub_has_no_notifications_and_no_system(moltbook_emulator: HubEmulator) -> None:
    key = moltbook_emulator.add_agent("helper_bot")
    hub = HubClient(moltbook_emulator.url, system_key=SYSTEM_KEY)
    try:
        caps = await detect_capabilities(hub, key, webhooks_enabled=False)
        assert hub.available and hub.breaker.state == "closed"  # "endpoint not found" is not a Hub failure
    finally:
        await hub.aclose()
    assert caps == HubCapabilities(notifications=False, mark_read=False, dms=True, system=False, webhooks=False,
                                   profile="moltbook")


async def test_a_write_only_route_is_marked_absent_on_its_first_miss_and_tried_again_later(
        moltbook_emulator: HubEmulator) -> None:
    key = moltbook_emulator.add_agent("helper_bot")
    hub = HubClient(moltbook_emulator.url)
    now_s = [100.0]
    tracker = CapabilityTracker(ALL_PRESENT, reprobe_after_s=300, clock=lambda: now_s[0])
    try:
        assert not tracker.absent("dms")  # write-only: present until the Hub says otherwise
        with pytest.raises(HubEndpointMissing):
            await hub.send_dm(key, "conv-1", "hello")
        tracker.mark_absent("dms")
        assert tracker.absent("dms") and tracker.current.dms is False
        now_s[0] += 299
        assert tracker.absent("dms")
        now_s[0] += 2  # due again: the next send is the probe
        assert not tracker.absent("dms") and tracker.current.dms is True
    finally:
        await hub.aclose()
    assert len(moltbook_emulator.requests.matching("/api/v1/agents/dm")) <= 1


def test_detected_absence_holds_until_the_next_detection() -> None:
    tracker = CapabilityTracker(ALL_PRESENT)
    tracker.update(HubCapabilities(notifications=False, mark_read=False, dms=True, system=False, webhooks=False,
                                   profile="moltbook"))
    assert tracker.absent("notifications") and tracker.absent("system") and not tracker.absent("dms")
    tracker.update(ALL_PRESENT)
    assert not tracker.absent("notifications")
    assert tracker.current.summary() == {"notifications": True, "mark_read": True, "dms": True, "system": True,
                                         "webhooks": False, "profile": "botburrow"}
