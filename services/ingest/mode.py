"""What ingest knows of the Hub's capabilities, and the ingestion mode that follows from them.

At start and every HUB_CAPABILITIES_PROBE_SECONDS, `botburrow.hub.capabilities.detect_capabilities` asks
the Hub what it serves. The profile and mode are logged when first known and again only when they change,
shown in `/readyz` under `details.hub` and exported as gauges. INGEST_MODE `auto` polls notifications
when the Hub serves them and derives them from the feed otherwise; a notification poll that meets
"endpoint not found" marks the capability absent at once (the next probe may find it back).

A detection that cannot finish (the Hub down, rate-limited) keeps what was known; before anything is
known the mode is None and ingest waits (its `hub` readiness check says why).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from prometheus_client import Gauge

from botburrow.hub.capabilities import CAPABILITIES, Capability, CapabilityTracker, HubCapabilities
from botburrow.hub.client import HubClient
from botburrow.hub.errors import HubError

log = logging.getLogger(__name__)
Mode = Literal["notifications", "feed"]
Detect = Callable[..., Awaitable[HubCapabilities]]
# A detection that failed is tried again this soon, not a whole probe interval later.
RETRY_S = 5.0

CAPABILITY = Gauge("botburrow_ingest_hub_capability", "What the Hub serves as ingest last found it (1 served)",
                   ["capability"])
PROFILE = Gauge("botburrow_ingest_hub_profile", "The Hub's detected profile (1 on the current one)", ["profile"])
MODE = Gauge("botburrow_ingest_mode", "The ingestion mode in use (1 on the current one)", ["mode"])


class HubModes:
    def __init__(self, hub: HubClient, detect: Detect, *, configured: str = "auto", webhooks: bool = False,
                 every_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.hub, self.detect, self.configured = hub, detect, configured
        self.webhooks, self.every_s, self.clock = webhooks, every_s, clock
        self.tracker: CapabilityTracker | None = None
        self._due_at = 0.0
        self._shown_mode: Mode | None = None

    @property
    def capabilities(self) -> HubCapabilities | None:
        return self.tracker.current if self.tracker else None

    @property
    def mode(self) -> Mode | None:
        if self.configured in ("notifications", "feed"):
            return self.configured  # type: ignore[return-value]
        if self.tracker is None:
            return None
        return "feed" if self.tracker.absent("notifications") else "notifications"

    def absent(self, name: Capability) -> bool:
        return self.tracker.absent(name) if self.tracker else False

    async def refresh_if_due(self, agent_key: str | None) -> None:
        if self.clock() < self._due_at:
            return
        self._due_at = self.clock() + self.every_s  # now: a ping's poll meanwhile does not probe again
        try:
            found = await self.detect(self.hub, agent_key, webhooks_enabled=self.webhooks)
        except HubError as exc:  # down or rate-limited: keep what was known, ask again soon (next round if none)
            self._due_at = self.clock() + min(RETRY_S, self.every_s) if self.tracker else 0.0
            log.debug("hub capabilities not detected this time", extra={"error": type(exc).__name__})
            return
        if self.tracker is None:
            self.tracker = CapabilityTracker(found, clock=self.clock)
            log.info("hub capabilities", extra=found.summary())
        else:
            self.tracker.update(found)
        self._show()

    def mark_absent(self, names: set[str]) -> None:
        """The Hub answered "endpoint not found" to these routes just now."""
        if self.tracker is None:
            return
        for name in names:
            if name in CAPABILITIES:
                self.tracker.mark_absent(name)
        self._show()

    def detail(self) -> dict[str, Any]:
        """`/readyz` `details.hub`: the profile, each capability and the mode (None until detected)."""
        found = self.capabilities
        return {"mode": self.mode, **(found.summary() if found else {"profile": None})}

    def _show(self) -> None:
        found = self.capabilities
        if found is None:
            return
        for name in CAPABILITIES:
            CAPABILITY.labels(name).set(1 if found.present(name) else 0)
        for profile in ("botburrow", "moltbook", "unknown"):
            PROFILE.labels(profile).set(1 if found.profile == profile else 0)
        mode = self.mode
        for each in ("notifications", "feed"):
            MODE.labels(each).set(1 if mode == each else 0)
        if mode != self._shown_mode:
            log.info("ingest mode", extra={"mode": mode, "configured": self.configured, "profile": found.profile})
            self._shown_mode = mode
