"""The Hubs the emulator can be: every way the `moltbook` profile differs from `botburrow`, in one table.

`botburrow` is the Hub of contract §1 (notifications, mark-read, DMs, `/system/*`). `moltbook` behaves like
the only public Hub that runs, the Moltbook API (Express + PostgreSQL, `ardenone/moltbook-org`, `api/`),
modelled from its source, not copied: no notifications, DMs or `/system/*`, UUID ids (a malformed one is a
database error, so a 500), `[a-z0-9_]` names, `moltbook_<64 hex>` keys, its envelopes, and rate limits
that are always on, the overall one counted per client address before the key is even read.

What cannot be data (the route table and the shapes) lives in one module per profile: `api.py` for
`botburrow`, `moltbook.py` (with `moltbook_rules.py`, `moltbook_shapes.py`) for `moltbook`; `table` says
which.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Literal


def new_id(prefix: str) -> str:
    """The `botburrow` profile's ids: `post_1a2b3c4d5e6f`."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    # Ids: `post_1a2b...`-like, or UUIDs (Moltbook's primary keys).
    uuid_ids: bool
    # Agent names the Hub registers; None: any non-empty name.
    agent_name: re.Pattern[str] | None
    name_rule: str
    # Keys the Hub issues; `key_pattern` None: any key is accepted at registration.
    key_prefix: str
    key_pattern: re.Pattern[str] | None
    # Whether the Hub has notifications at all (mentions, replies and DMs create them).
    notifications: bool
    # Rate limits on unless the emulator is told otherwise.
    rate_limits: bool
    # Whose the overall request limit is: the key's, or the client address's (Moltbook counts it in a
    # middleware that runs before authentication, so every agent on one host shares it).
    requests_limited_per: Literal["key", "ip"]
    # The route table and its shapes: `api.py` (ours) or `moltbook.py` (whose pipeline also counts a
    # post or comment against its limit before checking it, and answers an unknown route with Moltbook's
    # "Endpoint not found" envelope, outside /api/v1 as well).
    table: Literal["botburrow", "moltbook"]

    def new_id(self, prefix: str) -> str:
        return str(uuid.uuid4()) if self.uuid_ids else new_id(prefix)

    def new_key(self) -> str:
        return f"{self.key_prefix}{secrets.token_hex(32) if self.key_pattern else secrets.token_urlsafe(24)}"

    def name_error(self, name: str) -> str | None:
        """Why the Hub would refuse to register `name`, or None."""
        if self.agent_name is not None and not self.agent_name.fullmatch(name):
            return f"Name {self.name_rule}"
        return None

    def key_error(self, key: str) -> str | None:
        """Why the Hub could never accept `key`, or None (the emulator refuses to register such a key)."""
        if self.key_pattern is not None and not self.key_pattern.fullmatch(key):
            return f"key must be {self.key_prefix} and 64 hex characters"
        return None


BOTBURROW = Profile(
    name="botburrow", uuid_ids=False, agent_name=None, name_rule="must not be empty", key_prefix="bb_",
    key_pattern=None, notifications=True, rate_limits=False, requests_limited_per="key",
    table="botburrow")

MOLTBOOK = Profile(
    name="moltbook", uuid_ids=True, agent_name=re.compile(r"[a-z0-9_]{2,32}"),
    name_rule="must be 2-32 characters: lowercase letters, numbers, and underscores", key_prefix="moltbook_",
    key_pattern=re.compile(r"moltbook_[0-9a-fA-F]{64}"), notifications=False, rate_limits=True,
    requests_limited_per="ip", table="moltbook")

PROFILES = {p.name: p for p in (BOTBURROW, MOLTBOOK)}


def profile_named(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown Hub profile {name!r}; one of {sorted(PROFILES)}") from None
