"""Run one command in a throw-away sandbox: the seam between executors and the isolation backend.

One interface, three backends chosen by SANDBOX_BACKEND (contract §7):
  - `bwrap`  Debian bubblewrap: new namespaces (user, pid, net, ipc, uts, mount), only the workspace
             writable, a cleared environment, uid 1000, all capabilities dropped, limits through cgroup v1
             (when writable) or prlimit.
  - `docker` a Docker engine through aiodocker: network none, read-only root, tmpfs scratch, non-root
             user, CapDrop ALL, no-new-privileges, memory/pids/cpu limits, labelled containers swept.
  - `none`   local mode only: the command runs as a plain child process; loudly warned.

Inside every sandbox: the workspace at `spec.workdir` (default /workspace, writable), each `Bind` at its
target (read-only), a size-limited tmpfs at /tmp (scratch; HOME defaults to /tmp), no network but `lo`,
stdin closed (some CLIs wait forever on an open stdin), and an environment built only from `spec.env`
(plus PATH and HOME defaults when absent). Nothing of the runner's environment leaks in.

Usage:
    sandbox = services.runner.sandbox.create("bwrap")            # or create("docker", docker_host=..., image=...)
    await sandbox.sweep()                                   # once at start-up: leftovers of a crashed runner
    result = await sandbox.run(SandboxSpec(argv=[...], workspace="/path", label=activation_id),
                               on_line=handle_stdout_line,  # optional: stdout lines as they arrive
                               stop=budget_spent)           # optional: an asyncio.Event that kills it early
    await sandbox.close()

Long-lived stdio processes (MCP servers): `await sandbox.stdio(spec, network=..., limit_workspace=...)` gives
the command, args and env to spawn (e.g. with `mcp.StdioServerParameters`) and a `cleanup()` for after it
exits. Same confinement as `run`; `network=True` gives the sandbox its own network namespace with a route
out (bwrap: slirp4netns via netlaunch.py, no host loopback; docker: the engine's default network).

Disk: /tmp and /dev/shm are tmpfs of `limits.tmpfs_bytes` each (charged to the memory limit); each file
the command writes is capped at `limits.file_bytes`, and the workspace's total size at the backend's
`workspace_bytes` (SANDBOX_WORKSPACE_MB; see quota.py: a loop-mounted file system over the workspace,
enforced as root; a run that fills it is reported with `workspace_full` and a line on its stderr).
The docker backend runs as the workspace owner, or hands a root-owned workspace to uid 1000 (chown) so
the command can write it.
Relay sockets in a read-only bind are reachable; make them mode 0666 (the sandbox uid differs).

Modules:
- `__init__`: the interface (`Sandbox`, `SandboxSpec`, `SandboxResult`, `Limits`) and `create`
- `bwrap`, `docker`, `local`: the three backends
- `_common`: what the backends share: the environment, capped output, exit statuses
- `cgroups`: per-sandbox cgroup v1 groups for bwrap
- `netlaunch`: a bwrap sandbox with its own network (slirp4netns)
- `quota`: the workspace's total size limit
- `dockerd`: a private Docker engine for tests and CI
- `images`: the docker backend's base image, built without a registry
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import msgspec

MiB = 1 << 20

#: The workspace mount point inside the sandbox.
WORKDIR = "/workspace"
#: The scratch tmpfs inside the sandbox (HOME defaults to it).
SCRATCH = "/tmp"
#: The unprivileged identity commands run as, inside the sandbox.
SANDBOX_UID = 1000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Resource limits of one run. Memory includes swap (swap = memory)."""

    memory_bytes: int = 512 * MiB
    pids: int = 256
    cpus: float = 1.0
    timeout_s: float = 600.0
    tmpfs_bytes: int = 256 * MiB
    #: Largest single file the command may write (RLIMIT_FSIZE): bounds disk use of the workspace per file.
    file_bytes: int = 256 * MiB
    #: Cap on captured stdout and on captured stderr, each; the rest is dropped and `*_truncated` set.
    output_bytes: int = 1 * MiB


class Bind(msgspec.Struct, frozen=True, kw_only=True):
    """A host path made visible inside the sandbox, read-only (tools, a CLI venv, a relay socket dir)."""

    source: str
    target: str


class SandboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    argv: list[str]
    #: The whole environment of the command; nothing else is inherited. PATH and HOME get defaults.
    env: dict[str, str] = {}
    #: Host directory bind-mounted writable at `workdir`; the command starts there.
    workspace: str
    workdir: str = WORKDIR
    binds: tuple[Bind, ...] = ()
    limits: Limits = Limits()
    #: Activation id: names/labels the sandbox so a start-up sweep can remove leftovers.
    label: str


class SandboxResult(msgspec.Struct, frozen=True, kw_only=True):
    #: The command's exit status; 128 + signal number when killed by a signal (137 = SIGKILL).
    exit_code: int
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    #: The wall-clock limit ran out and the sandbox was killed.
    timed_out: bool = False
    #: The caller's `stop` event was set and the sandbox was killed (e.g. the activation's budget ran out).
    stopped: bool = False
    #: The memory limit was hit and the kernel killed a process (not detectable under prlimit).
    oom_killed: bool = False
    #: The workspace's total size limit was reached (a write failed with ENOSPC).
    workspace_full: bool = False
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not (self.timed_out or self.stopped or self.oom_killed or self.workspace_full)


@dataclasses.dataclass(frozen=True)
class StdioCommand:
    """A long-lived sandboxed process spoken to over its stdin/stdout (an MCP server): start `command`
    with `args`, exactly `env`, in `cwd` (e.g. as `mcp.StdioServerParameters`); once it has exited, await
    `cleanup()` (it also kills what is left). The sandbox's secret values are never in `args`."""

    command: str
    args: list[str]
    env: dict[str, str]
    cwd: str
    cleanup: Callable[[], Awaitable[None]]


#: Called with each stdout line (without its newline) as it arrives; may be sync or async.
LineHandler = Callable[[str], Awaitable[None] | None]


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up or started (not: the command failed)."""


@runtime_checkable
class Sandbox(Protocol):
    name: str

    async def run(
        self, spec: SandboxSpec, *, on_line: LineHandler | None = None, stop: asyncio.Event | None = None
    ) -> SandboxResult:
        """Run `spec.argv` to completion, the wall-clock limit or `stop` being set; always clean up.

        `on_line` gets every stdout line as it arrives (also past the capture cap). Raises SandboxError
        only when the sandbox itself cannot be set up; a failing command is a result.
        """
        ...

    async def stdio(self, spec: SandboxSpec, *, network: bool = False, limit_workspace: bool = True) -> StdioCommand:
        """How to start `spec.argv` sandboxed with its stdin and stdout left to the caller (no wall clock: the
        caller ends it). `network`: its own network namespace with a route out (never the host's); otherwise
        only `lo`. `limit_workspace`: apply the workspace size limit (false for a server's private dir)."""
        ...

    async def sweep(self, *, stale_after_s: float | None = None) -> int:
        """Remove sandboxes left by processes that are gone; return how many were removed. A backend that
        cannot always tell whether their owner is gone (docker: another host) also removes those older
        than `stale_after_s`."""
        ...

    async def close(self) -> None: ...


#: SANDBOX_WORKSPACE_MB's default: the total size of one workspace.
WORKSPACE_BYTES = 512 * MiB


def create(backend: str, *, docker_host: str | None = None, image: str | None = None,
           workspace_bytes: int = WORKSPACE_BYTES) -> Sandbox:
    """The backend named by SANDBOX_BACKEND. `docker` needs `image`; `docker_host` defaults to DOCKER_HOST.
    `workspace_bytes` bounds each workspace's total size (0: unbounded)."""
    if backend == "bwrap":
        from services.runner.sandbox.bwrap import BwrapSandbox

        return BwrapSandbox(workspace_bytes=workspace_bytes)
    if backend == "docker":
        from services.runner.sandbox.docker import DockerSandbox

        if not image:
            raise SandboxError("the docker sandbox backend needs an image")
        return DockerSandbox(image=image, docker_host=docker_host, workspace_bytes=workspace_bytes)
    if backend == "none":
        from services.runner.sandbox.local import LocalSandbox

        return LocalSandbox()
    raise SandboxError(f"unknown sandbox backend {backend!r}: bwrap, docker or none")


__all__ = [
    "DEFAULT_PATH",
    "SANDBOX_UID",
    "SCRATCH",
    "WORKDIR",
    "WORKSPACE_BYTES",
    "Bind",
    "Limits",
    "LineHandler",
    "MiB",
    "Sandbox",
    "SandboxError",
    "SandboxResult",
    "SandboxSpec",
    "StdioCommand",
    "create",
]
