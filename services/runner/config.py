"""The runner's settings, read once: `RunnerConfig.from_settings` in the stage's `run()`, then passed down.

Below `run()` no code reads the environment for a setting; only secrets are read from it (at the
moment they are used, botburrow/secrets.py). Each field names the setting it comes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from botburrow.settings import BY_NAME
from services.runner.context import InputBounds
from services.runner.modelaccess import ModelAccess

if TYPE_CHECKING:
    from services.runner.sandbox import Sandbox


def _default(name: str) -> Any:
    setting = BY_NAME[name]
    return setting.parse(setting.default or "")


class SandboxConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Which sandbox backend runs the CLIs, the MCP servers and the shell tools, and its sizes."""

    backend: str = _default("SANDBOX_BACKEND")  # SANDBOX_BACKEND: bwrap, docker or none
    memory_mb: int = _default("SANDBOX_MEMORY_MB")  # SANDBOX_MEMORY_MB: one CLI sandbox
    workspace_mb: int = _default("SANDBOX_WORKSPACE_MB")  # SANDBOX_WORKSPACE_MB
    image: str = _default("SANDBOX_IMAGE")  # SANDBOX_IMAGE (docker)
    docker_host: str | None = None  # DOCKER_HOST (docker)

    @classmethod
    def from_settings(cls, settings: Any) -> SandboxConfig:
        return cls(backend=settings["SANDBOX_BACKEND"], memory_mb=settings["SANDBOX_MEMORY_MB"],
                   workspace_mb=settings["SANDBOX_WORKSPACE_MB"],
                   image=settings["SANDBOX_IMAGE"] or _default("SANDBOX_IMAGE"),
                   docker_host=settings["DOCKER_HOST"] or None)


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

    timeout_s: float = _default("ACTIVATION_TIMEOUT_SECONDS")  # ACTIVATION_TIMEOUT_SECONDS
    max_tokens: int = _default("ACTIVATION_MAX_TOKENS")  # ACTIVATION_MAX_TOKENS
    input_bounds: InputBounds = msgspec.field(default_factory=InputBounds)  # HUB_*_MAX_*
    thread_agent_replies_max: int = _default("THREAD_AGENT_REPLIES_MAX")  # THREAD_AGENT_REPLIES_MAX
    access: ModelAccess = msgspec.field(default_factory=ModelAccess)  # MODEL_*, ANTHROPIC_BASE_URL
    sandbox: SandboxConfig = msgspec.field(default_factory=SandboxConfig)
    # Where the CLIs are found: the pinned tools (BOTBURROW_TOOLS_DIR), then this PATH.
    tools_dir: Path = Path(__file__).resolve().parents[2] / "tools"
    search_path: str = ""

    @classmethod
    def from_settings(cls, settings: Any, *, tools_dir: Path, search_path: str) -> RunnerConfig:
        return cls(timeout_s=settings["ACTIVATION_TIMEOUT_SECONDS"], max_tokens=settings["ACTIVATION_MAX_TOKENS"],
                   input_bounds=InputBounds.from_settings(settings),
                   thread_agent_replies_max=settings["THREAD_AGENT_REPLIES_MAX"],
                   access=ModelAccess.from_settings(settings), sandbox=SandboxConfig.from_settings(settings),
                   tools_dir=tools_dir, search_path=search_path)
