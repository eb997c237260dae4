"""The runner on a Hub that lacks routes or throttles (issue 16): a DM on a Hub without DMs is skipped with
that reason, a 429 or a 500 is retried after its wait and answered exactly once, a sustained 429 ends in a
dead letter with its reason, and the agent's Hub name (`_` where its config name has `-`) is its own.

Real parts: nats-server, the Hub emulator with injected faults, the scripted LLM, the runner in-process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.hub_emulator.guards import Fault
from botburrow.doubles.scripted_llm import ScriptedLLM
from botburrow.runtime.bus import Bus
from schemas.events import DeadLetter
from schemas.hub import Author, Notification
from services.runner.posting import ReplyMarker, reply_key
from streams.topology import REPLIES
from tests.fixtures.runner import Rig, agent_yaml, dead_letters, kinds, metrics_of
from tests.fixtures.wait import until

ENDPOINT_NOT_FOUND = "Endpoint not found"


def comments_route(post_id: str | None) -> str:
    return f"/api/v1/posts/{post_id}/comments"


async def test_a_dm_on_a_hub_without_dms_is_skipped_with_that_reason(rig: Rig) -> None:
    await rig.add_agent("dee")
    rig.hub.faults.add(Fault(status=404, message=ENDPOINT_NOT_FOUND, path_prefix="/api/v1/agents/dm"))
    first, second = rig.hub.dm("dee", "are you there?"), rig.hub.dm("dee", "hello again")
    rig.llm.set_script([{"text": "Yes, here."}])
    await rig.start()
    _, end, events = await rig.activate("dee", [first])

    assert end == "completed"
    metrics = metrics_of(events)
    assert metrics.outcome == "skipped" and "no DMs" in (metrics.error or "")
    assert "Posted" not in kinds(events)
    # The next DM is skipped before any model call: the route is known absent.
    _, end, events = await rig.activate("dee", [second])
    assert end == "completed" and "no DMs" in (metrics_of(events).error or "")
    assert len(rig.llm.requests) == 1
    assert not [m for m in rig.hub.dms if m.sender == "dee"] and not await dead_letters(rig.bus)


async def test_a_dm_send_that_fails_is_retried_and_sent_once(rig: Rig) -> None:
    await rig.add_agent("dot")
    note = rig.hub.dm("dot", "ping")
    rig.hub.faults.add(Fault(status=429, count=6, retry_after_s=0, path_prefix="/api/v1/agents/dm", method="POST"))
    rig.llm.set_script([{"text": "pong"}] * 3)
    await rig.start()
    _, end, events = await rig.activate("dot", [note])

    assert end == "completed" and metrics_of(events).outcome == "posted", metrics_of(events).error
    assert [m.content for m in rig.hub.dms if m.sender == "dot"] == ["pong"]


async def test_a_rate_limited_reply_is_retried_after_the_wait_and_posted_once(rig: Rig) -> None:
    await rig.add_agent("rae")
    note = rig.hub.mention("rae", "quick question")
    # More 429s than the client waits out in one activation: the activation itself is retried.
    rig.hub.faults.add(Fault(status=429, count=6, retry_after_s=0, path_prefix=comments_route(note.post_id),
                             method="POST"))
    rig.llm.set_script([{"text": "Quick answer."}] * 3)
    await rig.start()
    _, end, events = await rig.activate("rae", [note])

    assert end == "completed" and metrics_of(events).outcome == "posted", metrics_of(events).error
    assert [c.content for c in rig.replies_by("rae", note.post_id)] == ["Quick answer."]
    assert not await dead_letters(rig.bus)


async def test_a_500_on_the_reply_is_retried_and_posted_once(rig: Rig) -> None:
    await rig.add_agent("fay")
    note = rig.hub.mention("fay", "hello")
    rig.hub.faults.add(Fault(status=500, count=1, path_prefix=comments_route(note.post_id), method="POST"))
    rig.llm.set_script([{"text": "Hello back."}] * 3)
    await rig.start()
    _, end, events = await rig.activate("fay", [note])

    assert end == "completed" and metrics_of(events).outcome == "posted", metrics_of(events).error
    assert [c.content for c in rig.replies_by("fay", note.post_id)] == ["Hello back."]


async def test_a_sustained_429_ends_in_a_dead_letter_with_its_reason(rig: Rig) -> None:
    await rig.add_agent("sam")
    note = rig.hub.mention("sam", "anyone?")
    rig.hub.faults.add(Fault(status=429, retry_after_s=0, path_prefix=comments_route(note.post_id), method="POST"))
    rig.llm.set_script([{"text": "Here."}] * 6)
    await rig.start()
    _, end, events = await rig.activate("sam", [note])

    assert end == "failed" and "rate limited" in (metrics_of(events).error or "")
    letters = await until(dead_letters_of(rig, "sam"), 15.0, "the dead letter")
    assert "rate limited" in letters[0].reason
    assert not rig.replies_by("sam", note.post_id)


def dead_letters_of(rig: Rig, agent: str) -> Callable[[], Awaitable[list[DeadLetter]]]:
    async def find() -> list[DeadLetter]:
        return [d for d in await dead_letters(rig.bus) if agent in d.subject]
    return find


async def add_agent_named_on_the_hub(rig: Rig, name: str, hub_name: str) -> None:
    rig.keys[name] = rig.hub.add_agent(hub_name)
    definition = parse_agent(name, agent_yaml(name), b"You are {{name}}.")
    kv = await rig.bus.kv(bucket.BUCKET)
    await kv.put(bucket.key("agent", name), bucket.encode(definition))


async def test_a_notification_from_the_agents_hub_name_is_its_own(rig: Rig) -> None:
    await add_agent_named_on_the_hub(rig, "ann-bot", "ann_bot")
    note = rig.hub.mention("ann_bot", "note to self", sender="ann_bot")
    await rig.start()
    _, end, events = await rig.activate("ann-bot", [note])

    assert end == "completed" and metrics_of(events).outcome == "skipped"
    assert not rig.llm.requests


async def test_a_pending_reply_found_under_the_hub_name_is_not_posted_again(rig: Rig) -> None:
    await add_agent_named_on_the_hub(rig, "bo-bot", "bo_bot")
    note = rig.hub.mention("bo_bot", "answer me")
    # A runner died between posting and marking: the reply is on the Hub under the agent's Hub name.
    rig.hub.add_comment(note.post_id or "", "Already answered.", author="bo_bot", parent_id=note.comment_id,
                        notify=False)
    activation_id = "act-bo-pending"
    marker = ReplyMarker(state="pending", content="Already answered.", post_id=note.post_id,
                         parent_id=note.comment_id)
    kv = await rig.bus.kv(REPLIES.name)
    await kv.put(reply_key(activation_id, note.id), msgspec.json.encode(marker))
    rig.llm.set_script([{"text": "A second answer."}])
    await rig.start()
    _, end, events = await rig.activate("bo-bot", [note], activation_id=activation_id)

    assert end == "completed" and metrics_of(events).outcome == "posted"
    assert [c.content for c in rig.hub.comments_on(note.post_id) if c.author_name == "bo_bot"] == ["Already answered."]


async def test_a_dm_the_hub_refuses_is_dead_lettered_with_the_reason_like_a_comment(rig: Rig) -> None:
    await rig.add_agent("dru")
    dm, mention = rig.hub.dm("dru", "hi"), rig.hub.mention("dru", "hello")
    rig.hub.faults.add(Fault(status=400, message="conversation closed", path_prefix="/api/v1/agents/dm",
                             method="POST"))
    rig.hub.faults.add(Fault(status=400, message="thread locked", path_prefix=comments_route(mention.post_id),
                             method="POST"))
    rig.llm.set_script([{"text": "Hi."}, {"text": "Hello."}])
    await rig.start()
    for note, target, message in ((dm, "dm", "conversation closed"), (mention, "comment", "thread locked")):
        _, end, events = await rig.activate("dru", [note])
        assert end == "failed" and f"refused the {target}" in (metrics_of(events).error or "")
        letters = await until(dead_letters_with(rig, message), 15.0, f"the {target}'s dead letter")
        assert f"the Hub refused the {target}" in letters[0].reason


def dead_letters_with(rig: Rig, text: str) -> Callable[[], Awaitable[list[DeadLetter]]]:
    async def find() -> list[DeadLetter]:
        return [d for d in await dead_letters(rig.bus) if text in d.reason]
    return find


async def test_on_the_moltbook_profile_a_mention_is_answered_once_and_a_dm_skipped(
        bus: Bus, nats_url: str, scripted_llm: ScriptedLLM) -> None:
    hub = HubEmulator(system_key="moltbook-has-no-system-key", profile="moltbook")
    await hub.start()
    rig = Rig(bus, nats_url, hub, scripted_llm)
    try:
        await add_agent_named_on_the_hub(rig, "mo-bot", "mo_bot")
        # What feed-derived ingestion makes of a comment naming @mo_bot (the profile has no notifications).
        post = hub.add_post("A thread", "a question")
        comment = hub.add_comment(post.id, "@mo_bot what do you think?")
        mention = Notification(id=f"mention-{comment.id}", type="mention", post_id=post.id, comment_id=comment.id,
                               from_=Author(name=comment.author_name), content=comment.content)
        dm = Notification(id="dm-n-1", type="dm", dm_id="dm-1", from_=Author(name="alice"), content="psst")
        scripted_llm.set_script([{"text": "I think so."}, {"text": "Psst back."}])
        await rig.start()
        _, end, events = await rig.activate("mo-bot", [mention])
        assert end == "completed" and metrics_of(events).outcome == "posted", metrics_of(events).error
        _, end, events = await rig.activate("mo-bot", [dm])
        assert end == "completed" and "no DMs" in (metrics_of(events).error or "")
    finally:
        await rig.close()
        await hub.stop()
    assert [c.content for c in hub.comments_on(mention.post_id) if c.author_name == "mo_bot"] == ["I think so."]
    assert len(scripted_llm.requests) == 2  # the DM was thought about once, then found unanswerable
    assert not await dead_letters(bus)


async def test_a_retry_after_a_429_on_the_second_reply_does_not_post_the_first_again(rig: Rig) -> None:
    await rig.add_agent("two")
    first, second = rig.hub.mention("two", "first question"), rig.hub.mention("two", "second question")
    rig.hub.faults.add(Fault(status=429, count=6, retry_after_s=0, path_prefix=comments_route(second.post_id),
                             method="POST"))
    rig.llm.set_script([{"text": "One answer."}] * 3)
    await rig.start()
    _, end, events = await rig.activate("two", [first, second])

    assert end == "completed" and metrics_of(events).outcome == "posted", metrics_of(events).error
    assert [c.content for c in rig.replies_by("two", first.post_id)] == ["One answer."]
    assert [c.content for c in rig.replies_by("two", second.post_id)] == ["One answer."]
    assert kinds(events).count("RunStarted") >= 2  # it was retried, and posted the first reply once
