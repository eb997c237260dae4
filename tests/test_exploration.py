"""Exploration runs say why they end `skipped` (issue 17): no candidate post, the model chose none, or its
answer is not in the asked form; the reason is the ending's, shown by `botburrow show`."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from botburrow.cli.ops import load_run
from botburrow.cli.timeline import render
from botburrow.definitions import bucket
from botburrow.definitions.parse import parse_agent
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.runtime.bus import Bus
from schemas.events import ActivationRequested
from schemas.hub import Post
from services.runner.exploration import Chosen, nothing_to_explore, read_answer
from streams import subjects
from tests.fixtures.runner import ANTHROPIC_BRAIN, Rig, metrics_of

EXPLORER = f"""\
version: "1.0.0"
name: explorer
type: native
brain:
  {ANTHROPIC_BRAIN}
capabilities:
  grants: [hub:read, hub:write]
interests:
  communities: [m/general]
behavior:
  discovery:
    enabled: true
  limits:
    min_interval_seconds: 0
"""


def post(post_id: str) -> Post:
    return Post(id=post_id, title="t", content="c", author_name="ann", submolt="general", created_at="")


def test_read_answer_says_why_nothing_is_posted() -> None:
    candidates = [post("p1"), post("p2")]
    assert read_answer("POST p2\nWell said.\n", candidates) == Chosen(candidates[1], "Well said.")
    assert read_answer("  SKIP ", candidates) == "the model chose none of the 2 candidate posts (it answered SKIP)"
    assert read_answer("", candidates) == "the model chose none of the 2 candidate posts (it answered SKIP)"
    assert read_answer("POST p9\nhi", candidates) == (
        "the model's answer does not start with `POST <id>` of one of the 2 candidate posts "
        "(its first line: 'POST p9')")
    assert read_answer("POST p1\n \n", candidates) == "the model chose post p1 but wrote no comment below `POST p1`"
    long_line = read_answer("x" * 500, candidates)
    assert isinstance(long_line, str) and len(long_line) < 200


def test_nothing_to_explore_names_the_communities_or_their_absence() -> None:
    definition = parse_agent("explorer", EXPLORER.encode(), b"You explore.")
    assert nothing_to_explore(definition) == (
        "nothing to explore: no post in m/general by another author and older than 300 s")
    bare = parse_agent("explorer", EXPLORER.replace("[m/general]", "[]").encode(), b"You explore.")
    assert nothing_to_explore(bare) == "nothing to explore: the agent names no communities (interests.communities)"


async def explore(rig: Rig, bus: Bus) -> list[Any]:
    activation_id = f"explore-{uuid.uuid4().hex[:8]}"
    wait = await rig.ends_of("explorer", activation_id)
    request = ActivationRequested(activation_id=activation_id, agent="explorer", kind="exploration", priority="low")
    await bus.publish(subjects.activation("low", "explorer"), request, msg_id=f"act:{activation_id}")
    await wait()
    return await load_run(bus, activation_id)


@pytest.mark.parametrize(("answer", "reason"), [
    ("SKIP", "the model chose none of the 1 candidate posts (it answered SKIP)"),
    ("Nothing caught my eye.", "the model's answer does not start with `POST <id>` of one of the 1 candidate posts "
                               "(its first line: 'Nothing caught my eye.')"),
    (None, "nothing to explore: no post in m/general by another author and older than 300 s"),
])
async def test_a_skipped_exploration_says_why_in_its_run(rig: Rig, bus: Bus, hub_emulator: HubEmulator,
                                                        answer: str | None, reason: str) -> None:
    rig.keys["explorer"] = hub_emulator.add_agent("explorer")
    definition = parse_agent("explorer", EXPLORER.encode(), b"You explore.")
    await (await bus.kv(bucket.BUCKET)).put(bucket.key("agent", "explorer"), bucket.encode(definition))
    hub_emulator.add_post("Fresh", "too new to join", age_s=10)
    if answer is not None:
        hub_emulator.add_post("Old", "worth a reply", age_s=3600)
        rig.llm.set_script([{"text": answer}])
    await rig.start()
    events = await explore(rig, bus)

    metrics = metrics_of(events)
    assert (metrics.outcome, metrics.error) == ("skipped", reason)
    assert "outcome=skipped " in render(events) and f" reason={reason}" in render(events)
    assert rig.llm.violations == []
