"""How a CLI process is started: the seam a sandbox backend plugs into.

`DirectRunner` runs the command on the runner's host (local mode, tests, and until a sandbox backend
is wired in): stdin closed (OpenCode waits forever on an open one, Claude Code 3 s), its own process
group killed whole at the deadline or when asked to stop, and exactly the environment given.
`keep_sweeping` removes the sandboxes of runners that died (at start-up, then now and then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from services.runner.config import SandboxConfig

log = logging.getLogger(__name__)

KILL_GRACE_S = 3.0
#: Past the activation's wall clock a live runner has killed and removed its sandbox within this (its own
#: kill, a 30 s wait for the engine, the removal): an older container is a leftover, whoever made it.
SWEEP_GRACE_S = 120.0
#: How often a running runner sweeps again: a dead runner on another host or pid namespace is only
#: recognised by its containers' age, which no start-up sweep of its replacement has reached yet.
SWEEP_EVERY_S = 60.0
SWEEP_TIMEOUT_S = 30.0
OUTPUT_CAP_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Completed:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    stopped: bool = False  # killed because `stop` was set (the activation's limits were spent)
    oom_killed: bool = False  # the sandbox's memory limit was hit (a process in it was killed)


class ProcessRunner(Protocol):
    """Run argv in `cwd` (the workspace) with exactly `env`; `binds` are host paths the command reads
    (the CLI, its configs, the relay): a sandbox shows them read-only at the same paths; `ports` are
    runner loopback ports (the model gateway) it must reach at 127.0.0.1 as well."""

    async def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout_s: float,
                  stop: asyncio.Event | None = None, binds: Sequence[Path] = (), label: str = "",
                  ports: Sequence[int] = ()) -> Completed: ...


class DirectRunner:
    """No sandbox: a plain child process in a new session (contract §7 allows it in local mode only)."""

    async def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout_s: float,
                  stop: asyncio.Event | None = None, binds: Sequence[Path] = (), label: str = "",
                  ports: Sequence[int] = ()) -> Completed:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=dict(env), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=OUTPUT_CAP_BYTES)
        output = asyncio.create_task(proc.communicate())
        stopper = asyncio.create_task(stop.wait()) if stop is not None else None
        try:
            done, _ = await asyncio.wait({output, *([stopper] if stopper else [])}, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if output in done:
                stdout, stderr = output.result()
                return Completed(proc.returncode, stdout, stderr)
            await _kill_group(proc)
            try:  # a grandchild that left the group may still hold the pipes open: do not wait on it
                stdout, stderr = await asyncio.wait_for(asyncio.shield(output), KILL_GRACE_S)
            except TimeoutError:
                stdout, stderr = b"", b""
            return Completed(proc.returncode, stdout, stderr, timed_out=not done, stopped=bool(done))
        finally:
            if stopper is not None:
                stopper.cancel()
            if not output.done():  # cancelled from outside: take the whole group down with us
                await _kill_group(proc)
                output.cancel()


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the process group, SIGKILL after a grace: MCP children and helpers go with the CLI."""
    for sig, grace_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
            break
        except TimeoutError:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers that left the leader behind


#: A CLI sandbox holds the CLI, its MCP relays and the loopback forwarder. OpenCode (a Bun binary) with two
#: relays was OOM-killed at 512 MiB and then hung until the deadline (hence SANDBOX_MEMORY_MB's default of
#: 2048); with 1 CPU the relays' start-up (~1.7 s each, idle) pushes against Goose's extension start-up window.
CLI_MEMORY_BYTES = SandboxConfig().memory_mb << 20
CLI_CPUS = 2.0


class SandboxRunner:
    """A `services.runner.sandbox` backend as the runner: the workspace writable at its own path, every bind
    read-only at its own path (so argv and config paths mean the same inside), HOME and TMPDIR on the
    sandbox's scratch tmpfs (the run directory is read-only in there). `limits` default to the sandbox
    defaults with `memory_bytes` and CLI_CPUS; the wall clock is always the activation's."""

    def __init__(self, sandbox: Any, limits: Any = None, *, memory_bytes: int = CLI_MEMORY_BYTES) -> None:
        self.sandbox, self.limits, self.memory_bytes = sandbox, limits, memory_bytes

    async def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout_s: float,
                  stop: asyncio.Event | None = None, binds: Sequence[Path] = (), label: str = "",
                  ports: Sequence[int] = ()) -> Completed:
        from services.runner.sandbox import Limits

        # Docker refuses more CPUs than the host has.
        cpus = min(CLI_CPUS, float(os.cpu_count() or 1))
        limits = msgspec.structs.replace(self.limits or Limits(memory_bytes=self.memory_bytes, cpus=cpus),
                                         timeout_s=timeout_s)
        async with contextlib.AsyncExitStack() as stack:
            if self.sandbox.name != "none":  # its own network namespace: carry the ports in over sockets
                for port in ports:
                    sockets = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="bb-lo-"))
                    # The docker sandbox's user may differ from ours: it must reach the socket by name.
                    await asyncio.to_thread(os.chmod, sockets, 0o711)
                    stack.push_async_callback(asyncio.to_thread, shutil.rmtree, sockets, True)
                    await stack.enter_async_context(_unix_to_tcp(sockets / "gw.sock", port))
                    argv = [sys.executable, "-m", "services.runner.executors.loopback",
                            str(sockets / "gw.sock"), str(port), *argv]
                    binds = [*binds, sockets]
            return await self._run(argv, env, cwd, limits, stop, binds, label)

    async def _run(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, limits: Any,
                   stop: asyncio.Event | None, binds: Sequence[Path], label: str) -> Completed:
        from services.runner.loop import LoopFailed
        from services.runner.sandbox import SCRATCH, Bind, SandboxError, SandboxSpec

        # `none` runs on the host, where the run directory is writable and /tmp is shared: keep HOME.
        scratch = {} if self.sandbox.name == "none" else {"HOME": SCRATCH, "TMPDIR": SCRATCH}
        spec = SandboxSpec(argv=list(argv), env={**env, **scratch}, workspace=str(cwd),
                           workdir=str(cwd), binds=tuple(Bind(source=str(p), target=str(p)) for p in _outermost(binds)),
                           limits=limits, label=label or "botburrow-cli")
        try:
            result = await self.sandbox.run(spec, stop=stop)
        except SandboxError as error:
            raise LoopFailed(f"sandbox {self.sandbox.name}: {error}") from error
        return Completed(None if result.timed_out else result.exit_code, result.stdout.encode(),
                         result.stderr.encode(), timed_out=result.timed_out, stopped=result.stopped,
                         oom_killed=result.oom_killed)


@contextlib.asynccontextmanager
async def _unix_to_tcp(path: Path, port: int) -> AsyncIterator[None]:
    """A unix socket at `path` whose connections are forwarded to 127.0.0.1:port (the runner's side)."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        up_writer.close()
        writer.close()

    server = await asyncio.start_unix_server(forward, str(path))
    await asyncio.to_thread(os.chmod, path, 0o777)  # the sandbox user (uid 1000) connects to it
    try:
        yield
    finally:
        server.close()


def _outermost(paths: Sequence[Path]) -> list[Path]:
    """Distinct paths without those inside another one (a bind over a parent would hide it). A symlink
    is kept as named and as resolved: argv and shebangs name the one, the link leads to the other."""
    named = {Path(os.path.abspath(p)) for p in paths if p.exists()}
    unique = sorted(named | {p.resolve() for p in named}, key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for path in unique:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def runner_for(config: SandboxConfig, sandbox: Any = None) -> SandboxRunner:
    """The process runner of the CLIs (contract §7): `sandbox`, else the backend `config` names (default
    bwrap), with SANDBOX_MEMORY_MB per sandbox (ours: the contract names no such setting). The docker backend
    runs SANDBOX_IMAGE (in production the runner image itself, so the runner's paths exist in it) on the
    engine at DOCKER_HOST, with the runner's toolchain shown read-only at its own paths as with bwrap."""
    return SandboxRunner(sandbox or config.open(), memory_bytes=config.memory_mb << 20)


async def sweep_once(runner: ProcessRunner, *, activation_timeout_s: float) -> int:
    """Remove what dead runners left behind: docker containers (which run on without their runner, see
    services.runner.sandbox.docker) or bwrap's cgroups (its processes die with the runner, --die-with-parent).
    Errors are logged, not raised: an engine that is down now must not keep the runner from starting."""
    sandbox = getattr(runner, "sandbox", None)
    if sandbox is None:
        return 0
    try:
        async with asyncio.timeout(SWEEP_TIMEOUT_S):
            removed = await sandbox.sweep(stale_after_s=activation_timeout_s + SWEEP_GRACE_S)
    except Exception as exc:
        log.warning("sandbox sweep failed", extra={"error": repr(exc)})
        return 0
    if removed:
        log.info("removed leftover sandboxes", extra={"removed": removed})
    return removed


async def keep_sweeping(runner: ProcessRunner, stop: asyncio.Event, *, activation_timeout_s: float,
                        every_s: float = SWEEP_EVERY_S) -> None:
    """`sweep_once` every `every_s` until `stop` (the start-up sweep is the caller's, before it takes work)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return
        await sweep_once(runner, activation_timeout_s=activation_timeout_s)
