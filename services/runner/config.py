"""The runner's settings, read once: `RunnerConfig.from_settings` in the stage's `run()`, then passed down.

Below `run()` no code reads the environment for a setting; only secrets are read from it (at the
moment they are used, botburrow/secrets.py). Each field names the setting it comes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from botburrow.settings import RunnerSettings
from botburrow.tools import tools_dir
from services.runner.context import InputBounds
from services.runner.modelaccess import ModelAccess

if TYPE_CHECKING:
    from services.runner.sandbox import Sandbox


#: The repository's own tools/ (BOTBURROW_TOOLS_DIR unset), read from no environment.
DEFAULT_TOOLS_DIR = tools_dir({})


class SandboxConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Which sandbox backend runs the CLIs, the MCP servers and the shell tools, and its sizes."""

    backend: str = RunnerSettings.sandbox_backend  # SANDBOX_BACKEND: bwrap, docker or none
    memory_mb: int = RunnerSettings.sandbox_memory_mb  # SANDBOX_MEMORY_MB: one CLI sandbox
    workspace_mb: int = RunnerSettings.sandbox_workspace_mb  # SANDBOX_WORKSPACE_MB
    image: str = RunnerSettings.sandbox_image  # SANDBOX_IMAGE (docker)
    docker_host: str | None = None  # DOCKER_HOST (docker)

    @classmethod
    def from_settings(cls, settings: RunnerSettings) -> SandboxConfig:
        return cls(backend=settings.sandbox_backend, memory_mb=settings.sandbox_memory_mb,
                   workspace_mb=settings.sandbox_workspace_mb, image=settings.sandbox_image,
                   docker_host=settings.docker_host)


    def open(self) -> Sandbox:
        """The backend these settings name: the one place they become a sandbox (the CLIs, the MCP servers
        and the shell tools of a runner share it)."""
        from services.runner import sandbox

        workspace_bytes = self.workspace_mb << 20
        if self.backend == "docker":
            return sandbox.create("docker", docker_host=self.docker_host, image=self.image,
                                  workspace_bytes=workspace_bytes)
        return sandbox.create(self.backend, workspace_bytes=workspace_bytes)


class RunnerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What every activation of one runner process is allowed and bounded by (frozen: read, never written)."""

    timeout_s: float = RunnerSettings.activation_timeout_seconds  # ACTIVATION_TIMEOUT_SECONDS
    max_tokens: int = RunnerSettings.activation_max_tokens  # ACTIVATION_MAX_TOKENS
    input_bounds: InputBounds = msgspec.field(default_factory=InputBounds)  # HUB_*_MAX_*
    thread_agent_replies_max: int = RunnerSettings.thread_agent_replies_max  # THREAD_AGENT_REPLIES_MAX
    access: ModelAccess = msgspec.field(default_factory=ModelAccess)  # MODEL_*, ANTHROPIC_BASE_URL
    sandbox: SandboxConfig = msgspec.field(default_factory=SandboxConfig)
    # Where the CLIs are found: the pinned tools (BOTBURROW_TOOLS_DIR), then this PATH.
    tools_dir: Path = DEFAULT_TOOLS_DIR
    search_path: str = ""

    @classmethod
    def from_settings(cls, settings: RunnerSettings, *, search_path: str) -> RunnerConfig:
        """`search_path`: the runner's PATH (not a setting: where its CLIs are found when not pinned)."""
        tools_dir = Path(settings.botburrow_tools_dir) if settings.botburrow_tools_dir else DEFAULT_TOOLS_DIR
        return cls(timeout_s=settings.activation_timeout_seconds, max_tokens=settings.activation_max_tokens,
                   input_bounds=InputBounds.from_settings(settings),
                   thread_agent_replies_max=settings.thread_agent_replies_max,
                   access=ModelAccess.from_settings(settings), sandbox=SandboxConfig.from_settings(settings),
                   tools_dir=tools_dir, search_path=search_path)
