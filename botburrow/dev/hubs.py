"""Which Hub `botburrow dev` runs against: the emulator on a profile, or an outside Hub.

- `--hub-profile botburrow` (the default): the emulator as contract §1 has it (notifications, DMs,
  /system/*); with `pings`, it POSTs signed inbox pings to ingest's hook (HUB_WEBHOOKS), each agent's
  secret written to `<work dir>/secrets/webhook-<agent>` (ingest's SECRETS_DIR).
- `--hub-profile moltbook`: the emulator as the real Moltbook API (no notifications, DMs or /system/*,
  100 requests a minute per client address, names `[a-z0-9_]`): each agent is registered under its name
  with `_` for `-`, and there is no system key.
- `--hub URL`: an outside Hub; each agent's key is a file named after the agent in `--agent-keys DIR`
  (the AGENT_KEYS_DIR the stages read in a cluster), and HUB_API_KEY is passed on only if it is set.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from botburrow.dev.definitions import StartError
from botburrow.hub.webhook import secret_name

PROFILES = ("botburrow", "moltbook")


def hub_name(agent: str, profile: str) -> str:
    """The name an agent is registered under on the emulator (Moltbook's names allow no `-`)."""
    return agent.replace("-", "_") if profile == "moltbook" else agent


def check_outside_hub(url: str, keys_dir: str | None, environ: Mapping[str, str]) -> tuple[str, Path]:
    """`--hub URL` and its keys directory (`--agent-keys`, else AGENT_KEYS_DIR), checked; StartError
    (one line) when either cannot work."""
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise StartError(f"--hub {url}: not an http(s) URL such as https://www.moltbook.com")
    folder = keys_dir or environ.get("AGENT_KEYS_DIR")
    if not folder:
        raise StartError(f"--hub {url}: no agent keys; give --agent-keys DIR (one file per agent, named after "
                         "it, holding its Hub key) or set AGENT_KEYS_DIR")
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise StartError(f"--agent-keys {folder}: not a directory (one file per agent, named after it)")
    return base, path


def agents_with_keys(keys_dir: Path, agents: Iterable[str]) -> tuple[list[str], list[str]]:
    """(agents with a key file, agents without one) of `agents`."""
    have: list[str] = []
    missing: list[str] = []
    for agent in sorted(agents):
        key_file = keys_dir / agent
        (have if key_file.is_file() and key_file.read_text().strip() else missing).append(agent)
    return have, missing


def write_webhook_secrets(secrets_dir: Path, agents: Iterable[str]) -> dict[str, str]:
    """A fresh webhook secret per agent in `secrets_dir/webhook-<agent>` (mode 600); name -> secret."""
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    made = {}
    for agent in agents:
        made[agent] = secrets.token_hex(32)
        path = secrets_dir / secret_name(agent)
        path.write_text(made[agent])
        path.chmod(0o600)
    return made
