"""The one way a stage builds its HubClient: the process's breaker for that Hub, and the Hub's shared
request budget (KV bucket `hub-budget`) as the settings and the Hub's profile say.

    hub = await hub_client_for_stage(ctx.settings, ctx.bus, background=True, breaker_cooldown_s=...)

The profile decides whose the budget is: `moltbook` limits per client address (100 a minute: one
budget for every agent, stage and replica on the host); `botburrow` per agent key (a budget per key,
its limit learnt from the Hub's `X-RateLimit-Limit`). `auto` asks the Hub once, without a key (a route
it lacks answers "endpoint not found" before any authentication; that one request per process start
is made before the budget is known, so it is not counted); a Hub that cannot be asked at start is
treated per address with no limit known, which only shares `Retry-After` and a learnt limit: safe,
never more than the Hub allows. `HUB_REQUESTS_PER_MINUTE`, when set, is the limit whatever the profile.
"""

from __future__ import annotations

import logging

from botburrow.hub.breaker import breaker_for
from botburrow.hub.budget import BUCKET, KvRequestBudget, Per
from botburrow.hub.capabilities import Profile, detect_capabilities
from botburrow.hub.client import HubClient
from botburrow.hub.errors import HubError
from botburrow.runtime.bus import Bus
from botburrow.settings import HubReader

log = logging.getLogger(__name__)
# Whose a profile's request limit is, and how many a minute (0: learnt from the Hub's header).
PROFILE_LIMITS: dict[str, tuple[Per, int]] = {"moltbook": ("address", 100), "botburrow": ("key", 0)}
UNKNOWN_LIMIT: tuple[Per, int] = ("address", 0)


def budget_terms(profile: str, requests_per_minute: int = 0) -> tuple[Per, int]:
    """(per, limit a minute) of a profile, the setting overriding the limit."""
    per, limit = PROFILE_LIMITS.get(profile, UNKNOWN_LIMIT)
    return per, requests_per_minute or limit


async def resolve_profile(hub: HubClient, configured: str) -> Profile:
    """`HUB_PROFILE`, or for `auto` what the Hub says of itself ("unknown" if it cannot be asked now)."""
    if configured in ("botburrow", "moltbook"):
        return "botburrow" if configured == "botburrow" else "moltbook"
    try:
        return (await detect_capabilities(hub, None, webhooks_enabled=False)).profile
    except HubError as exc:
        log.warning("hub profile not detected at start", extra={"error": str(exc)})
        return "unknown"


async def hub_client_for_stage(settings: HubReader, bus: Bus, *, system_key: str | None = None,
                               background: bool = False, breaker_cooldown_s: float = 30.0,
                               budget_wait_s: float = 30.0) -> HubClient:
    """A HubClient on the process's breaker for `settings.hub_url`, spending the Hub's shared budget.
    `background` (ingest): spends only what foreground callers (runner, metrics) leave."""
    hub = HubClient(settings.hub_url, system_key=system_key, background=background, budget_wait_s=budget_wait_s,
                    breaker=breaker_for(settings.hub_url, cooldown_s=breaker_cooldown_s))
    profile = await resolve_profile(hub, settings.hub_profile)
    per, limit = budget_terms(profile, settings.hub_requests_per_minute)
    hub.budget = KvRequestBudget(await bus.kv(BUCKET), settings.hub_url, per=per, limit_per_min=limit)
    log.info("hub client", extra={"profile": profile, "budget_per": per, "requests_per_minute": limit or None,
                                  "background": background})
    return hub
