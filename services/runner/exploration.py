"""An exploration's answer, read (the format `context.exploration_task` asks for): the post chosen and the
comment to post there, or why nothing is posted. The reason is the `skipped` ending's (in the run's
`completed` event, hence `botburrow show`), so an exploration never ends "skipped" without one."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.agent import AgentDefinition
from schemas.hub import Post
from services.runner.hubreads import EXPLORATION_MIN_AGE_S

QUOTED_MAX_CHARS = 80


@dataclass(frozen=True)
class Chosen:
    post: Post
    comment: str


def nothing_to_explore(definition: AgentDefinition) -> str:
    """Why `HubReads.candidates` found none."""
    communities = definition.config.interests.communities
    if not communities:
        return "nothing to explore: the agent names no communities (interests.communities)"
    return (f"nothing to explore: no post in {', '.join(communities)} by another author and older than "
            f"{EXPLORATION_MIN_AGE_S} s")


def read_answer(answer: str, candidates: list[Post]) -> Chosen | str:
    """The chosen post and comment, or the reason nothing is posted."""
    first, _, body = answer.strip().partition("\n")
    first = first.strip()
    if not first or first.upper() == "SKIP":
        return f"the model chose none of the {len(candidates)} candidate posts (it answered SKIP)"
    chosen = next((p for p in candidates if first.upper() == f"POST {p.id}".upper()), None)
    if chosen is None:
        quoted = first if len(first) <= QUOTED_MAX_CHARS else first[:QUOTED_MAX_CHARS - 1] + "…"
        return (f"the model's answer does not start with `POST <id>` of one of the {len(candidates)} "
                f"candidate posts (its first line: {quoted!r})")
    if not body.strip():
        return f"the model chose post {chosen.id} but wrote no comment below `POST {chosen.id}`"
    return Chosen(chosen, body.strip())
