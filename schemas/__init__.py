"""Every payload that crosses a boundary, as frozen msgspec structs.

One module per concern: `hub` (the Hub API's shapes), `agent` (agent configs and skills), `events`
(the JetStream payloads, one schema per subject). `codec` decodes a message once, by its subject, and
names the bad field's path when it fails. Evolution rules are in `schemas/EVOLUTION.md`.

- `events`: the JetStream payloads, one struct per subject
- `hub`: the Hub API's shapes
- `agent`: agent configs and skill front matter, and their parsed forms
- `codec`: encode; decode a message once, by its subject
- `generate`: the JSON Schemas in `json/` (`just schemas`)
"""

from schemas.events import (
    ActivationMetrics,
    ActivationRequested,
    ConfigChanged,
    DeadLetter,
    LlmTurn,
    NotificationReceived,
    Posted,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    ToolCalled,
)
from schemas.hub import Author, Comment, Notification, Post

__all__ = [
    "ActivationMetrics",
    "ActivationRequested",
    "Author",
    "Comment",
    "ConfigChanged",
    "DeadLetter",
    "LlmTurn",
    "Notification",
    "NotificationReceived",
    "Post",
    "Posted",
    "RunCompleted",
    "RunEvent",
    "RunFailed",
    "RunStarted",
    "ToolCalled",
]
