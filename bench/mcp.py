"""What starting MCP servers adds to an activation: open (start + list tools) and close of the toolset,
per server set, median and max over a few rounds; plus one tool call and the relay's start.

No network is needed: listing tools works offline, the filesystem server reads a temp workspace.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from botburrow.definitions.parse import parse_agent
from services.runner.mcptools import McpToolsets
from services.runner.seams import ToolContext

ROUNDS = 5
SETS = {
    "none": ([], []),
    "filesystem": (["filesystem:read"], ["filesystem"]),
    "github": (["github:read"], ["github"]),
    "brave": (["brave:search"], ["brave"]),
    "all_three": (["filesystem:read", "github:read", "brave:search"], ["filesystem", "github", "brave"]),
}


def _definition(grants: list[str], servers: list[str]) -> Any:
    config = {"version": "1.0.0", "name": "bench", "type": "native", "brain": {"model": "claude-sonnet-4-20250514"},
              "capabilities": {"grants": grants, "mcp_servers": servers}}
    return parse_agent("bench", json.dumps(config).encode(), b"bench")


async def _round(factory: McpToolsets, grants: list[str], servers: list[str], workspace: Path) -> dict[str, float]:
    ctx = ToolContext(definition=_definition(grants, servers), agent_key="k", grants=set(grants),
                      activation_id="bench", poster=None, hub=None, workspace=workspace)
    started = time.monotonic()
    async with factory.open(ctx) as box:
        opened = time.monotonic()
        out = {"open_ms": (opened - started) * 1000, "tools": float(len(box.specs()))}
        if "filesystem" in box.hosts:
            t0 = time.monotonic()
            await box.call("filesystem__list_directory", {"path": str(workspace)})
            out["call_ms"] = (time.monotonic() - t0) * 1000
        if box.hosts:
            t0 = time.monotonic()
            await box.relay()
            out["relay_start_ms"] = (time.monotonic() - t0) * 1000
        closing = time.monotonic()
    out["close_ms"] = (time.monotonic() - closing) * 1000
    return out


def _summary(rounds: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, Any]:
    summary: dict[str, Any] = {"tools": int(rounds[0]["tools"])}
    for key in keys:
        values = [r[key] for r in rounds if key in r]
        if values:
            summary[f"{key}_median"] = round(statistics.median(values), 1)
            summary[f"{key}_max"] = round(max(values), 1)
    return summary


async def main(results_dir: Path) -> dict:
    workspace = Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    (workspace / "a.txt").write_text("a")
    # Dummy credentials: the servers start and list tools without using them.
    environ = {"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_bench_dummy_token", "BRAVE_API_KEY": "bench-dummy-brave-key"}
    cold_factory = McpToolsets(environ, reuse_idle_s=0)  # every activation starts its servers
    warm_factory = McpToolsets(environ)  # the same agent's next activation reuses github/brave
    cold: dict[str, Any] = {}
    warm: dict[str, Any] = {}
    try:
        for name, (grants, servers) in SETS.items():
            rounds = [await _round(cold_factory, grants, servers, workspace) for _ in range(ROUNDS)]
            cold[name] = _summary(rounds, ("open_ms", "close_ms", "call_ms", "relay_start_ms"))
            await _round(warm_factory, grants, servers, workspace)  # the first activation starts them
            rounds = [await _round(warm_factory, grants, servers, workspace) for _ in range(ROUNDS)]
            warm[name] = _summary(rounds, ("open_ms", "close_ms"))
    finally:
        await cold_factory.aclose()
        await warm_factory.aclose()
    return {"rounds": ROUNDS, "cold": cold, "same_agent_next_activation": warm}
