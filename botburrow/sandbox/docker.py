"""SANDBOX_BACKEND=docker: one fresh container per run on a Docker engine, through aiodocker.

Network none, read-only root, a size-limited tmpfs at /tmp, the workspace the only writable bind,
non-root user, every capability dropped, no-new-privileges, memory (= memory + swap), pids and CPU
limits, RLIMIT_FSIZE, log driver `none` (output is read through an attach stream opened before start, so
a flood never lands on the engine's disk). The wall-clock limit wraps `wait()` in asyncio.wait_for (its
own timeout does not bound the wait) and ends in SIGKILL. Containers are labelled and removed in
`finally`; `sweep()` removes leftovers of runners on this host that are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat
import time
import uuid
from typing import Any

import aiodocker

from botburrow.sandbox import SANDBOX_UID, SCRATCH, LineHandler, SandboxError, SandboxResult, SandboxSpec
from botburrow.sandbox._common import LABEL_KEY, Capture, Ending, sandbox_env, wait_bounded

OWNER_LABEL = "botburrow.sandbox.owner"
_STDOUT, _STDERR = 1, 2


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
        "Labels": {LABEL_KEY: spec.label, OWNER_LABEL: _owner()},
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

    def __init__(self, *, image: str, docker_host: str | None = None) -> None:
        self.image = image
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
        return SandboxResult(
            exit_code=code,
            stdout=out.text(),
            stderr=err.text(),
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            timed_out=ending is Ending.TIMED_OUT,
            stopped=ending is Ending.STOPPED,
            oom_killed=bool(state.get("OOMKilled")),
            duration_s=time.monotonic() - started,
        )

    async def _attach_and_wait(
        self, container: Any, timeout_s: float, stop: asyncio.Event | None, out: Capture, err: Capture
    ) -> tuple[int, Ending | None]:
        # Attach before start so no early output is missed.
        stream = container.attach(stdout=True, stderr=True)
        async with stream:
            pump = asyncio.create_task(_pump(stream, out, err))
            # A failing on_line handler ends the run (its error is raised below).
            pump.add_done_callback(lambda done: done.cancelled() or done.exception() is None or _kill_soon(container))
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

    async def sweep(self) -> int:
        """Remove labelled containers whose runner is gone; return how many.

        A container of this host is removed when its runner's pid is dead; one of another host (a shared
        engine) only once it is no longer running, since its runner may still be alive there.
        """
        docker = self._client()
        host = socket.gethostname()
        removed = 0
        containers = await docker.containers.list(all=True, filters={"label": [LABEL_KEY]})
        for container in containers:
            owner = (container._container.get("Labels") or {}).get(OWNER_LABEL, "")
            owner_host, _, owner_pid = owner.rpartition(":")
            if owner_host == host and owner_pid.isdigit() and _alive(int(owner_pid)):
                continue
            if owner_host != host and container._container.get("State") == "running":
                continue
            with contextlib.suppress(aiodocker.DockerError):
                await container.delete(force=True)
                removed += 1
        return removed

    async def close(self) -> None:
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
