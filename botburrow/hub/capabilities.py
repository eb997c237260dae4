"""Which of the Hub's optional routes it serves: detected, not assumed (issue 16).

A Botburrow Hub serves notifications, mark-read, DMs and `/system/*`; a Moltbook-compatible Hub serves
none of them and answers "Endpoint not found". `detect_capabilities` asks once per route that has a GET
(`GET /notifications`, `GET /system/budget-health`); a route that answers anything but "endpoint not
found" is present, even with a 401 (the route exists; the key is another matter). Write-only routes
(mark-read, DM send) have nothing safe to ask: they start present, and the caller marks one absent on
its first `HubEndpointMissing` in a `CapabilityTracker`, which lets the next use through again after
`reprobe_after_s` (a Hub upgraded meanwhile is noticed). Webhooks (the Hub's inbox pings) are on by
configuration. Connection trouble is not an answer: `HubUnavailable` and `HubRateLimited` propagate, and
the caller keeps what it knew.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

import msgspec

from botburrow.hub.client import HubClient
from botburrow.hub.errors import HubAuthError, HubBadResponse, HubEndpointMissing, HubNotFound

log = logging.getLogger(__name__)
Profile = Literal["botburrow", "moltbook", "unknown"]
Capability = Literal["notifications", "mark_read", "dms", "system", "webhooks"]
CAPABILITIES: tuple[Capability, ...] = ("notifications", "mark_read", "dms", "system", "webhooks")
REPROBE_AFTER_S = 600.0
# Moltbook's answer to a route it does not have (its errorHandler's notFoundHandler).
_MOLTBOOK_MISSING = "endpoint not found"


class HubCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    notifications: bool
    mark_read: bool
    dms: bool
    system: bool
    webhooks: bool
    profile: Profile = "unknown"

    def present(self, name: Capability) -> bool:
        return bool(getattr(self, name))

    def summary(self) -> dict[str, bool | str]:
        """For logs, `/readyz` details and the metric's labels."""
        return {**{name: self.present(name) for name in CAPABILITIES}, "profile": self.profile}


ALL_PRESENT = HubCapabilities(notifications=True, mark_read=True, dms=True, system=True, webhooks=False,
                              profile="botburrow")


async def _notifications(hub: HubClient, key: str) -> tuple[bool, str]:
    """Whether the Hub serves `GET /notifications`, and what it said if not."""
    try:
        await hub.unread_notifications(key, limit=1)
    except HubEndpointMissing as exc:
        return False, exc.message
    except (HubAuthError, HubNotFound, HubBadResponse):
        pass  # the route answered: it exists (the key or the answer is another matter)
    return True, ""


async def _system(hub: HubClient) -> bool:
    if not hub.has_system_key:
        return False  # without the key the calls cannot be made, whatever the Hub serves
    try:
        await hub.budget_health()
    except (HubEndpointMissing, HubAuthError):
        return False
    except (HubNotFound, HubBadResponse):
        pass
    return True


async def detect_capabilities(hub: HubClient, agent_key: str | None, *, webhooks_enabled: bool) -> HubCapabilities:
    """Probe the routes that have a GET. `agent_key` None probes without a key: a served route answers
    401, a missing one "endpoint not found" (both Botburrow and Moltbook route before they authenticate).
    `/system/*` counts as present only when the client has a system key and the Hub serves it."""
    notifications, said = await _notifications(hub, agent_key or "")
    system = await _system(hub)
    profile: Profile = "unknown"
    if notifications:
        profile = "botburrow"
    elif _MOLTBOOK_MISSING in said.lower():
        profile = "moltbook"
    return HubCapabilities(notifications=notifications, mark_read=notifications, dms=True, system=system,
                           webhooks=webhooks_enabled, profile=profile)


class CapabilityTracker:
    """The capabilities as last detected, and the write-only ones found absent since, each until it is due
    to be tried again. One per process (ingest, runner, metrics); nothing here is shared."""

    def __init__(self, detected: HubCapabilities = ALL_PRESENT, *, reprobe_after_s: float = REPROBE_AFTER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.detected = detected
        self.reprobe_after_s = reprobe_after_s
        self._clock = clock
        self._absent_since: dict[str, float] = {}

    def update(self, detected: HubCapabilities) -> None:
        """A new detection; logged when it changed."""
        if detected != self.detected:
            log.info("hub capabilities", extra=detected.summary())
        self.detected = detected

    def absent(self, name: Capability, now_s: float | None = None) -> bool:
        """Absent by detection, or marked absent less than `reprobe_after_s` ago (after that, the next use
        is the probe)."""
        if not self.detected.present(name):
            return True
        since = self._absent_since.get(name)
        if since is None:
            return False
        if (self._clock() if now_s is None else now_s) - since < self.reprobe_after_s:
            return True
        del self._absent_since[name]
        return False

    def mark_absent(self, name: Capability, now_s: float | None = None) -> None:
        if name not in self._absent_since:
            log.info("hub capability absent", extra={"capability": name})
        self._absent_since[name] = self._clock() if now_s is None else now_s

    def mark_present(self, name: Capability) -> None:
        self._absent_since.pop(name, None)

    @property
    def current(self) -> HubCapabilities:
        """The detection with the marks applied (what `/readyz` and the metric show)."""
        marked = {name: False for name in CAPABILITIES if name in self._absent_since and self.absent(name)}
        return msgspec.structs.replace(self.detected, **marked) if marked else self.detected
