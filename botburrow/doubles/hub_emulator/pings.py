"""The Hub's inbox ping (push): on each new notification for an agent, a signed POST to ingest's hook.

`POST <hook base>/hooks/inbox/<agent>` with `{"type":"inbox_update","agent_id":"<agent>","unread_count":n}`,
signed with the agent's webhook secret by `botburrow.hub.webhook` (the one scheme both ends use). Sent in
the background: the request that created the notification never waits for it, and a receiver that is
down or refuses is logged and counted, never an error of the Hub's. An agent without a secret gets no
ping (polling still finds its notifications).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote

import httpx
import msgspec

from botburrow.hub.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, secret_name, sign
from botburrow.secrets import read_secret

log = logging.getLogger(__name__)

SecretSource = Mapping[str, str] | Callable[[str], str | None]


class InboxPing(msgspec.Struct, frozen=True, kw_only=True):
    type: str = "inbox_update"
    agent_id: str
    unread_count: int


def secrets_from_dir(secrets_dir: Path | None = None) -> Callable[[str], str | None]:
    """Secrets the way every stage reads them (`botburrow.secrets`): `<dir>/webhook-<agent>`; without a
    dir, `SECRETS_DIR/webhook-<agent>`, else the `WEBHOOK_<AGENT>` variable."""
    environ = {"SECRETS_DIR": str(secrets_dir)} if secrets_dir else None
    return lambda agent: read_secret(secret_name(agent), environ=environ)


class InboxPinger:
    def __init__(self, hook_url: str, secrets: SecretSource | None = None, *, timeout_s: float = 5.0,
                 max_in_flight: int = 32) -> None:
        self.hook_url = hook_url.rstrip("/")
        self._secrets = secrets if secrets is not None else secrets_from_dir()
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: list[tuple[str, int]] = []  # notified before any event loop ran (seeding)
        self._http: httpx.AsyncClient | None = None
        # What happened to the pings, for tests and the bench: delivered (2xx), refused, failed, skipped.
        self.delivered = self.refused = self.failed = self.skipped = 0

    def url_for(self, agent: str) -> str:
        return f"{self.hook_url}/hooks/inbox/{quote(agent, safe='')}"

    def notify(self, agent: str, unread_count: int) -> None:
        """Schedule a ping and return at once (called from the Hub's request handlers)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._waiting.append((agent, unread_count))
            return
        for waiting_agent, waiting_count in self._waiting:
            self._spawn(loop, waiting_agent, waiting_count)
        self._waiting.clear()
        self._spawn(loop, agent, unread_count)

    def _spawn(self, loop: asyncio.AbstractEventLoop, agent: str, unread_count: int) -> None:
        task = loop.create_task(self._send(agent, unread_count), name=f"inbox-ping:{agent}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _secret(self, agent: str) -> str | None:
        if callable(self._secrets):
            return await asyncio.to_thread(self._secrets, agent)
        return self._secrets.get(agent)

    async def _send(self, agent: str, unread_count: int) -> None:
        secret = await self._secret(agent)
        if not secret:
            self.skipped += 1
            log.warning("inbox ping for %s not sent: no webhook secret (%s)", agent, secret_name(agent))
            return
        body = msgspec.json.encode(InboxPing(agent_id=agent, unread_count=unread_count))
        timestamp_s = int(time.time())
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp_s),
                   SIGNATURE_HEADER: sign(secret.encode(), body, timestamp_s)}
        url = self.url_for(agent)
        try:
            async with self._slots:
                if self._http is None:
                    self._http = httpx.AsyncClient(timeout=self._timeout_s)
                response = await self._http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.failed += 1
            log.warning("inbox ping to %s failed: %s", url, type(exc).__name__)
            return
        if response.is_success:
            self.delivered += 1
        else:
            self.refused += 1
            log.warning("inbox ping to %s refused: HTTP %d", url, response.status_code)

    async def aclose(self) -> None:
        """Let the pings under way finish (bounded by their timeout), then close the connections."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
