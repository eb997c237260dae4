"""The coding-agent CLI executors (contract §4): `claude-code`, `goose`, `aider`, `opencode`, `custom`.

`cli_thinkers(sandbox)` returns one `Thinker` per executor type, sharing one runner-side model gateway;
the runner registers them next to `native` in `Deps.thinkers`.

- `base`: what every CLI executor shares: the job, the MCP wiring seam, the run, the verdict
- `process`: how a CLI process is started: the seam a sandbox backend plugs into
- `claude`, `goose`, `aider`, `opencode`, `custom`: one executor each
- `streams`: reading the CLIs' JSON-lines output
- `text`: any text in (argv, config files), only the answer out (CLI markup stripped)
- `loopback`: inside a sandbox, a loopback port forwarded to the runner's gateway socket
"""

from __future__ import annotations

from services.runner.config import SandboxConfig
from services.runner.executors.aider import Aider
from services.runner.executors.base import CliThinker, Flavor, McpEntry, McpWiring, ToolboxRelay, find_binary
from services.runner.executors.claude import ClaudeCode
from services.runner.executors.custom import Custom
from services.runner.executors.goose import Goose
from services.runner.executors.opencode import OpenCode
from services.runner.executors.process import (
    Completed,
    DirectRunner,
    ProcessRunner,
    SandboxRunner,
    runner_for,
)
from services.runner.gateway import ModelGateway
from services.runner.seams import Thinker

__all__ = ["CliThinker", "Completed", "DirectRunner", "McpEntry", "McpWiring", "ProcessRunner", "SandboxRunner",
           "ToolboxRelay", "cli_thinkers", "find_binary"]


def cli_thinkers(sandbox: SandboxConfig, *, gateway: ModelGateway | None = None,
                 runner: ProcessRunner | None = None, mcp: McpWiring | None = None) -> dict[str, Thinker]:
    """One thinker per CLI executor type; the gateway starts with the first activation that needs it.
    The process runner is `sandbox`'s backend unless one is given."""
    gateway = gateway or ModelGateway()
    runner = runner or runner_for(sandbox)
    flavors: list[Flavor] = [ClaudeCode(), Goose(), Aider(), OpenCode(), Custom()]
    return {f.name: CliThinker(f, gateway, runner=runner, mcp=mcp) for f in flavors}
