"""SANDBOX_BACKEND=docker: one fresh container per run on a Docker engine, through aiodocker.

Network none, read-only root, a size-limited tmpfs at /tmp, the workspace the only writable bind,
non-root user, every capability dropped, no-new-privileges, memory (= memory + swap), pids and CPU
limits, RLIMIT_FSIZE, log driver `none` (output is read through an attach stream opened before start, so
a flood never lands on the engine's disk). The wall-clock limit wraps `wait()` in asyncio.wait_for (its
own timeout does not bound the wait) and ends in SIGKILL. Containers are labelled and removed in
`finally`; `sweep()` removes leftovers of runners that are gone.

Several runners may share one engine (processes on one host, pods on one node), so a sweep removes a
container only when its runner is provably gone or the container is stale. Each container carries its
runner's identity: host, pid namespace, pid and the process's start time (so a reused pid, as in a
restarted container whose runner is pid 1 again, is not mistaken for the owner). A runner that shares
our host name and pid namespace is gone when no process with that pid and start time exists. Any other
runner (another host or namespace) cannot be checked from here: its containers are removed only once
older than `stale_after_s`, the activation's wall clock plus a grace, past which no live runner keeps a
sandbox (it kills and removes it at the deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiodocker

from services.runner.sandbox import (
    SANDBOX_UID,
    SCRATCH,
    WORKSPACE_BYTES,
    LineHandler,
    SandboxError,
    SandboxResult,
    SandboxSpec,
    StdioCommand,
)
from services.runner.sandbox._common import LABEL_KEY, Capture, Ending, result, sandbox_env, wait_bounded
from services.runner.sandbox.quota import WorkspaceQuotas

OWNER_LABEL = "services.runner.sandbox.owner"  # host:pid (older containers carry only this one)
RUNNER_LABEL = "services.runner.sandbox.runner"  # host:pid namespace:pid:start time, see the module doc
_STDOUT, _STDERR = 1, 2
_identity: dict[int, str] = {}


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _start_ticks(pid: int | str) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None: no such process."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            fields = stat_file.read().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[19] if len(fields) > 19 else None


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "unknown"


def runner_identity() -> str:
    """This process as RUNNER_LABEL names it (read from /proc once per process)."""
    pid = os.getpid()
    if pid not in _identity:
        _identity[pid] = f"{socket.gethostname()}:{_pid_namespace()}:{pid}:{_start_ticks('self')}"
    return _identity[pid]


def runner_gone(labels: dict[str, str]) -> bool:
    """True when the container's runner is provably gone: it ran on this host, in this pid namespace, and
    no process with its pid and start time exists now. False when it lives or cannot be checked."""
    host = socket.gethostname()
    identity = labels.get(RUNNER_LABEL)
    if identity is None:  # an older container: host:pid only
        owner_host, _, owner_pid = labels.get(OWNER_LABEL, "").rpartition(":")
        return owner_host == host and owner_pid.isdigit() and not _alive(int(owner_pid))
    owner_host, namespace, owner_pid, start = identity.rsplit(":", 3)
    if owner_host != host or namespace != _pid_namespace() or not owner_pid.isdigit():
        return False
    return _start_ticks(owner_pid) != start


def container_config(image: str, spec: SandboxSpec, user: str) -> dict[str, Any]:
    limits = spec.limits
    binds = [f"{spec.workspace}:{spec.workdir}:rw"] + [f"{b.source}:{b.target}:ro" for b in spec.binds]
    return {
        "Image": image,
        "Cmd": list(spec.argv),
        "Entrypoint": [],
        "Env": [f"{key}={value}" for key, value in sandbox_env(spec).items()],
        "User": user,
        "WorkingDir": spec.workdir,
        "Hostname": "sandbox",
        "Labels": {LABEL_KEY: spec.label, OWNER_LABEL: _owner(), RUNNER_LABEL: runner_identity()},
        "AttachStdin": False, "AttachStdout": True, "AttachStderr": True, "OpenStdin": False, "Tty": False,
        "NetworkDisabled": True,
        "HostConfig": {
            "NetworkMode": "none",
            "Memory": limits.memory_bytes,
            "MemorySwap": limits.memory_bytes,
            "NanoCpus": int(limits.cpus * 1e9),
            "PidsLimit": limits.pids,
            "ReadonlyRootfs": True,
            "Tmpfs": {SCRATCH: f"rw,nosuid,nodev,size={limits.tmpfs_bytes},mode=1777"},
            "ShmSize": limits.tmpfs_bytes,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Binds": binds,
            "Ulimits": [
                {"Name": "fsize", "Soft": limits.file_bytes, "Hard": limits.file_bytes},
                {"Name": "core", "Soft": 0, "Hard": 0},
            ],
            "LogConfig": {"Type": "none", "Config": {}},
            "AutoRemove": False,
        },
    }  # fmt: skip


def _run_flags(spec: SandboxSpec, user: str, network: bool) -> list[str]:
    """`container_config`'s confinement as `docker run` flags."""
    limits = spec.limits
    labels = {LABEL_KEY: spec.label, OWNER_LABEL: _owner(), RUNNER_LABEL: runner_identity()}
    flags = ["--network", "bridge" if network else "none", "--user", user, "--workdir", spec.workdir,
             "--hostname", "sandbox", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
             "--memory", str(limits.memory_bytes), "--memory-swap", str(limits.memory_bytes),
             "--cpus", str(limits.cpus), "--pids-limit", str(limits.pids), "--shm-size", str(limits.tmpfs_bytes),
             "--tmpfs", f"{SCRATCH}:rw,nosuid,nodev,size={limits.tmpfs_bytes},mode=1777",
             "--ulimit", f"fsize={limits.file_bytes}", "--ulimit", "core=0", "--log-driver", "none",
             "--entrypoint", "", "-v", f"{spec.workspace}:{spec.workdir}:rw"]
    for bind in spec.binds:
        flags += ["-v", f"{bind.source}:{bind.target}:ro"]
    for key, value in labels.items():
        flags += ["--label", f"{key}={value}"]
    return flags


def _chown_tree(path: str, uid: int) -> None:
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), uid, uid)
    os.chown(path, uid, uid)


async def _user_for(workspace: str) -> str:
    """Run as the workspace's owner so it can write there; a root-owned workspace is handed to uid 1000."""
    st = await asyncio.to_thread(os.stat, workspace)
    if st.st_uid != 0:
        return f"{st.st_uid}:{st.st_gid}"
    await asyncio.to_thread(_chown_tree, workspace, SANDBOX_UID)
    return f"{SANDBOX_UID}:{SANDBOX_UID}"


def _unreachable_bind(spec: SandboxSpec, user: str) -> str | None:
    """Why the container's user could not use a bind, if so. Binds keep their host owner and mode, and
    this user is not the runner's when the runner is root: a private (0700) directory of the runner would
    show up unreadable inside. And the engine would create a missing source as an empty root-owned dir."""
    uid, gid = (int(part) for part in user.split(":"))
    for bind in spec.binds:
        try:
            st = os.stat(bind.source)
        except OSError:
            return f"the bind source {bind.source} does not exist"
        shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
        need = 0o1 if stat.S_ISDIR(st.st_mode) else 0o4  # traverse a directory, read a file
        if not (st.st_mode >> shift) & need:
            return (f"the sandbox user {uid} cannot read the bind source {bind.source} "
                    f"(mode {stat.S_IMODE(st.st_mode):o}, owner {st.st_uid})")
    return None


class DockerSandbox:
    name = "docker"

    def __init__(self, *, image: str, docker_host: str | None = None, workspace_bytes: int = WORKSPACE_BYTES) -> None:
        self.image = image
        # The workspace's total size (quota.py): mounted on this host, so the engine must share it.
        self.quotas = WorkspaceQuotas(workspace_bytes)
        # None lets aiodocker find the engine itself (DOCKER_HOST, then /run/docker.sock).
        self.docker_host = docker_host
        self._docker: aiodocker.Docker | None = None

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.docker_host)
        return self._docker

    async def run(
        self, spec: SandboxSpec, *, on_line: LineHandler | None = None, stop: asyncio.Event | None = None
    ) -> SandboxResult:
        if not await asyncio.to_thread(os.path.isdir, spec.workspace):
            raise SandboxError("the sandbox workspace is not a directory")
        async with self.quotas.hold(spec.workspace):
            return await self._run(spec, on_line, stop)

    async def _run(self, spec: SandboxSpec, on_line: LineHandler | None, stop: asyncio.Event | None) -> SandboxResult:
        docker = self._client()
        started = time.monotonic()
        out = Capture(spec.limits.output_bytes, on_line)
        err = Capture(spec.limits.output_bytes)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", spec.label)[:64]
        user = await _user_for(spec.workspace)
        if problem := await asyncio.to_thread(_unreachable_bind, spec, user):
            raise SandboxError(problem)
        config = container_config(self.image, spec, user)
        try:
            container = await docker.containers.create(
                config=config, name=f"botburrow-sbx-{safe}-{uuid.uuid4().hex[:8]}"
            )
        except aiodocker.DockerError as error:
            raise SandboxError(f"could not create the sandbox container: {error.message}") from error
        try:
            code, ending = await self._attach_and_wait(container, spec.limits.timeout_s, stop, out, err)
            state = (await container.show())["State"]
        finally:
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True)
        full = await asyncio.to_thread(self.quotas.full, spec.workspace)
        return result(code, ending, out, err, started, oom_killed=bool(state.get("OOMKilled")),
                      full_limit_bytes=self.quotas.limit_bytes if full else 0)

    async def _attach_and_wait(
        self, container: Any, timeout_s: float, stop: asyncio.Event | None, out: Capture, err: Capture
    ) -> tuple[int, Ending | None]:
        # Attach before start so no early output is missed.
        stream = container.attach(stdout=True, stderr=True)
        async with stream:
            pump = asyncio.create_task(_pump(stream, out, err))
            # A failing on_line handler ends the run (its error is raised below).
            pump.add_done_callback(
                lambda done: None if done.cancelled() or done.exception() is None else _kill_soon(container))
            try:
                await container.start()
            except aiodocker.DockerError as error:
                pump.cancel()
                raise SandboxError(f"could not start the sandbox container: {error.message}") from error
            # container.wait(timeout=...) does not bound the wait: bound it ourselves, then SIGKILL.
            outcome = await wait_bounded(container.wait(), timeout_s, stop)
            ending = outcome if isinstance(outcome, Ending) else None
            if ending is not None:
                with contextlib.suppress(aiodocker.DockerError):
                    await container.kill(signal="SIGKILL")
                outcome = await asyncio.wait_for(container.wait(), timeout=30)
            assert isinstance(outcome, dict)
            code = int(outcome.get("StatusCode", 137))
            try:
                await asyncio.wait_for(pump, timeout=5)
            except TimeoutError:
                pump.cancel()
        return code, ending

    async def stdio(self, spec: SandboxSpec, *, network: bool = False, limit_workspace: bool = True) -> StdioCommand:
        """`docker run -i` with the same confinement as `run` (the docker CLI, on this host, holds the stdio);
        the environment goes in through an --env-file in a private directory, never argv. `network`: the
        engine's default network (its own namespace, no host loopback); otherwise none."""
        docker_cli = shutil.which("docker")
        if docker_cli is None:
            raise SandboxError("the docker CLI is not installed (MCP servers in the docker backend need it)")
        stack = contextlib.AsyncExitStack()
        try:
            if limit_workspace:
                await stack.enter_async_context(self.quotas.hold(spec.workspace))
            user = await _user_for(spec.workspace)
            if problem := await asyncio.to_thread(_unreachable_bind, spec, user):
                raise SandboxError(problem)
            run_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="botburrow-docker-"))
            stack.push_async_callback(asyncio.to_thread, shutil.rmtree, run_dir, True)
            env_file = run_dir / "env"
            await asyncio.to_thread(env_file.write_text, "".join(f"{k}={v}\n" for k, v in sandbox_env(spec).items()))
            name = f"botburrow-sbx-{re.sub(r'[^A-Za-z0-9_.-]', '_', spec.label)[:64]}-{uuid.uuid4().hex[:8]}"
            stack.push_async_callback(self._remove, name)
            args = ["run", "-i", "--rm", "--name", name, *_run_flags(spec, user, network), "--env-file", str(env_file),
                    self.image, *spec.argv]
        except BaseException:
            await stack.aclose()
            raise
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(run_dir)}
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        return StdioCommand(docker_cli, args, env, str(run_dir), stack.aclose)

    async def _remove(self, name: str) -> None:
        with contextlib.suppress(aiodocker.DockerError):
            await self._client().containers.container(name).delete(force=True)

    async def sweep(self, *, stale_after_s: float | None = None) -> int:
        """Remove labelled containers whose runner is gone, and (given `stale_after_s`) those of other
        runners older than that; never this process's own. Return how many were removed."""
        docker = self._client()
        ours = await asyncio.to_thread(runner_identity)
        removed = 0
        for container in await docker.containers.list(all=True, filters={"label": [LABEL_KEY]}):
            labels = container._container.get("Labels") or {}
            if labels.get(RUNNER_LABEL) == ours:
                continue
            age_s = time.time() - float(container._container.get("Created") or time.time())
            stale = stale_after_s is not None and age_s > stale_after_s
            if not stale and not await asyncio.to_thread(runner_gone, labels):
                continue
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True)
                removed += 1
        return removed + await self.quotas.sweep()

    async def close(self) -> None:
        await self.quotas.close()
        if self._docker is not None:
            await self._docker.close()
            self._docker = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_background: set[asyncio.Task[Any]] = set()


def _kill_soon(container: Any) -> None:
    async def kill() -> None:
        with contextlib.suppress(aiodocker.DockerError):
            await container.kill(signal="SIGKILL")

    task = asyncio.get_running_loop().create_task(kill())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _pump(stream: Any, out: Capture, err: Capture) -> None:
    while (message := await stream.read_out()) is not None:
        await (out if message.stream == _STDOUT else err).feed(message.data)
    await out.finish()
    await err.finish()
