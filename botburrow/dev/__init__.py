"""Local mode: `botburrow dev` starts everything on one machine (contract §7) and sends a demo mention.

`stack.LocalStack` does the starting and stopping (the end-to-end tests use it too); `terminal` adds
what a person sees: progress while starting, which agents loaded (and why any did not), the demo, then
every run event as it happens, and a clean stop on Ctrl-C or SIGTERM in every state.

- `__init__`: the options of `botburrow dev` (`add_arguments`, `DevOptions`) and `main`; light, since
  the CLI's parser imports it. A new option is an argument here and a field of `DevOptions`.
- `terminal`: the terminal side (`run`)
- `stack`: `LocalStack`: nats-server, the Hub emulator, the scripted LLM and every stage as a process
- `hubs`: which Hub: the emulator's profile (`--hub-profile`), or an outside one (`--hub`, `--agent-keys`)
- `agents/`, `skills/`: the example definitions local mode publishes
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from botburrow.runtime.bus import Bus


@dataclass(frozen=True, kw_only=True)
class DevOptions:
    demo: bool = True
    runners: int = 1
    cluster: int = 0  # N clustered nats-servers instead of one
    agents: str | None = None  # a definitions directory or s3://bucket/prefix; None: AGENTS_SOURCE, else examples
    model: str | None = None  # a real Anthropic or OpenAI-compatible endpoint instead of the scripted LLM
    traces: bool = False  # Arize Phoenix (tools/phoenix) receives every stage's traces; each reply links its trace
    hub_profile: str = "botburrow"  # the Hub emulator's profile: botburrow or moltbook (botburrow.dev.hubs)
    hub: str | None = None  # an outside Hub's URL instead of the emulator
    agent_keys: str | None = None  # with `hub`: one file per agent holding its Hub key; None: AGENT_KEYS_DIR

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DevOptions:
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**given, demo=not getattr(args, "no_demo", False))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-demo", action="store_true", help="do not send the demo mention")
    parser.add_argument("--runners", type=int, default=1, help="runner processes to start")
    parser.add_argument("--cluster", type=int, default=0, metavar="N",
                        help="N clustered nats-servers on loopback (R3 streams when N >= 3) instead of one")
    parser.add_argument("--agents", metavar="DIR|s3://BUCKET/PREFIX",
                        help="your agent definitions (default: AGENTS_SOURCE, else the examples)")
    parser.add_argument("--model", metavar="URL",
                        help="a real Anthropic or OpenAI-compatible endpoint (e.g. https://api.anthropic.com) "
                             "instead of the scripted LLM; the key comes from the environment (MODEL_KEY_ENVS)")
    parser.add_argument("--traces", action="store_true",
                        help="start Arize Phoenix (tools/phoenix, loopback, SQLite) as the OTLP receiver of every "
                             "stage and print each activation's trace link beside its reply")
    parser.add_argument("--hub-profile", choices=("botburrow", "moltbook"), default="botburrow",
                        help="the Hub emulator's API: botburrow (notifications, DMs, /system/*) or moltbook "
                             "(as the real Moltbook: none of those, 100 requests a minute per address)")
    parser.add_argument("--hub", metavar="URL", help="an outside Hub (e.g. a Moltbook API) instead of the emulator")
    parser.add_argument("--agent-keys", metavar="DIR",
                        help="with --hub: one file per agent, named after it, holding its Hub key "
                             "(default: AGENT_KEYS_DIR)")


def main(options: DevOptions | None = None, **given: object) -> int:
    """`botburrow dev`: `options`, or its fields as keywords."""
    from botburrow.dev.terminal import run

    # The stages log to their own files; this terminal shows progress and events only.
    for package in ("botburrow", "schemas", "streams", "services"):
        logging.getLogger(package).setLevel(logging.ERROR)
    try:
        return asyncio.run(run(options or DevOptions(**given)))  # type: ignore[arg-type]
    except KeyboardInterrupt:
        return 130


async def _await_configs(bus: Bus, names: list[str], timeout_s: float = 30.0) -> None:
    """Until configsync has published `names` (the end-to-end tests and the soak wait on it too)."""
    from botburrow.dev.stack import await_configs

    await await_configs(bus, names, timeout_s)
