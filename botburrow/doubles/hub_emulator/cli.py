"""`botburrow hub-emulator [--port N] [--host H] [--system-key K] [--seed FILE] [--keys-file FILE]
[--profile botburrow|moltbook] [--rate-limits|--no-rate-limits] [--limit BUCKET=N/SECONDS]
[--hook-url URL] [--secrets-dir DIR]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from botburrow.doubles.hub_emulator.emulator import DEFAULT_HUMAN, DEFAULT_SYSTEM_KEY, HubEmulator
from botburrow.doubles.hub_emulator.guards import MOLTBOOK_LIMITS, Bucket
from botburrow.doubles.hub_emulator.pings import secrets_from_dir
from botburrow.doubles.hub_emulator.profiles import PROFILES
from botburrow.doubles.hub_emulator.state import HubFault


def seed(emulator: HubEmulator, data: dict[str, Any]) -> dict[str, str]:
    """Load a seed document; returns the agents' keys by name.

    ```yaml
    agents: [{name: helper, type: native, key: optional, description: optional}]
    posts: [{title, content, url (a link post), author: alice, submolt: general, score: 0, age_s: 0,
             comments: [{content, author, replies: [...]}]}]
    mentions: [{agent, content, from: alice}]
    budget: {native: {used_pct: 85}, claude-code: {limit_usd: 20}}
    rate_limits: false
    ```
    """
    keys = {a["name"]: emulator.add_agent(a["name"], a.get("type", "native"), a.get("key"),
                                          a.get("description", "")) for a in data.get("agents") or []}
    for raw in data.get("posts") or []:
        post = emulator.add_post(raw["title"], raw.get("content", ""), author=raw.get("author", DEFAULT_HUMAN),
                                 submolt=raw.get("submolt", "general"), score=raw.get("score", 0),
                                 age_s=raw.get("age_s", 0.0), url=raw.get("url"))
        _seed_comments(emulator, post.id, raw.get("comments") or [], None)
    for raw in data.get("mentions") or []:
        emulator.mention(raw["agent"], raw["content"], raw.get("post_id"), raw.get("from", DEFAULT_HUMAN))
    for tool_type, raw in (data.get("budget") or {}).items():
        emulator.set_budget(tool_type, used_pct=raw.get("used_pct"), limit_usd=raw.get("limit_usd", 10.0))
    if data.get("rate_limits"):
        emulator.set_rate_limits(True)
    return keys


def _seed_comments(emulator: HubEmulator, post_id: str, comments: list[dict[str, Any]],
                   parent_id: str | None) -> None:
    for raw in comments:
        comment = emulator.add_comment(post_id, raw["content"], author=raw.get("author", DEFAULT_HUMAN),
                                       parent_id=parent_id, score=raw.get("score", 0))
        _seed_comments(emulator, post_id, raw.get("replies") or [], comment.id)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="botburrow hub-emulator", description="The Botburrow Hub emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--system-key", default=None, help="default: HUB_API_KEY, else a fixed local key")
    parser.add_argument("--seed", type=Path, help="YAML or JSON seed file (agents, posts, mentions, budget)")
    parser.add_argument("--keys-file", type=Path, help="write the agents' keys here as a JSON object")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=os.environ.get("HUB_EMULATOR_PROFILE",
                                                                                    "botburrow"),
                        help="which Hub to be (default: HUB_EMULATOR_PROFILE, else botburrow)")
    parser.add_argument("--rate-limits", action=argparse.BooleanOptionalAction, default=None,
                        help="enforce Moltbook's rate limits (default: the profile's; on for moltbook)")
    parser.add_argument("--limit", action="append", default=[], type=_limit, metavar="BUCKET=N/SECONDS",
                        help=f"override a rate limit, e.g. requests=100/60; buckets: {', '.join(MOLTBOOK_LIMITS)}")
    parser.add_argument("--hook-url", default=os.environ.get("HUB_EMULATOR_HOOK_URL") or None,
                        help="send signed inbox pings to <URL>/hooks/inbox/<agent> (default: HUB_EMULATOR_HOOK_URL)")
    parser.add_argument("--secrets-dir", type=Path, default=None,
                        help="where the webhook-<agent> secrets are (default: SECRETS_DIR, else WEBHOOK_<AGENT>)")
    return parser


def _limit(text: str) -> tuple[Bucket, tuple[int, float]]:
    bucket, _, rule = text.partition("=")
    count, _, window_s = rule.partition("/")
    if bucket not in MOLTBOOK_LIMITS:
        raise argparse.ArgumentTypeError(f"unknown bucket {bucket!r}")
    try:
        return bucket, (int(count), float(window_s))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not BUCKET=N/SECONDS") from None


async def run(args: argparse.Namespace) -> int:
    system_key = args.system_key or os.environ.get("HUB_API_KEY") or DEFAULT_SYSTEM_KEY
    emulator = HubEmulator(system_key=system_key, rate_limits=args.rate_limits, profile=args.profile,
                           limits=dict(args.limit), hook_url=args.hook_url,
                           webhook_secrets=secrets_from_dir(args.secrets_dir) if args.hook_url else None)
    keys: dict[str, str] = {}
    if args.seed:
        text = await asyncio.to_thread(args.seed.read_text)
        try:
            keys = seed(emulator, yaml.safe_load(text) or {})
        except HubFault as exc:  # e.g. a name with "-" on the moltbook profile
            print(f"hub-emulator: the seed was refused: {exc.error}", file=sys.stderr)
            return 2
    if args.keys_file:
        await asyncio.to_thread(args.keys_file.write_text, json.dumps(keys, indent=2) + "\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await emulator.start(args.host, args.port)
    print(f"Hub emulator on {emulator.url} (API {emulator.api_url}, admin {emulator.url}/admin, "
          f"profile {emulator.profile.name}); "
          f"agents: {', '.join(keys) or 'none'}", flush=True)
    try:
        await stop.wait()
    finally:
        await emulator.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
