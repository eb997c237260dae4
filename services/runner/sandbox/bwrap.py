"""SANDBOX_BACKEND=bwrap: Debian bubblewrap, for hosts (and runner pods) without a Docker engine.

Layout inside: a read-only root holding the host's /usr (and the merged-/usr symlinks), a synthetic /etc
(passwd, group, hosts, the CA bundle, alternatives), fresh /proc and /dev, size-limited tmpfs at /tmp and
/dev/shm, the workspace writable at spec.workdir, each Bind read-only. New user, pid, net, ipc, uts and cgroup
namespaces; uid/gid 1000; every capability dropped; no nested user namespaces; own session.

The sandbox environment reaches bwrap as `--clearenv --setenv ...` read from a file descriptor
(`--args FD`), so no value shows in the host's process list, and the host-side launcher (sh, prlimit,
bwrap, all running outside the sandbox) runs with a fixed minimal environment: a caller-chosen
LD_PRELOAD or similar never acts outside the sandbox.

Limits: per-run cgroup v1 groups for memory (+swap), pids and CPU when this host lets us make them
(see cgroups.py); otherwise prlimit stands in: the address space for memory (OOM then shows as a failed
allocation, not oom_killed), RLIMIT_NPROC for pids when not root, and CPU is not limited.
RLIMIT_FSIZE and RLIMIT_CORE=0 always.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from services.runner.sandbox import (
    SANDBOX_UID,
    SCRATCH,
    WORKSPACE_BYTES,
    LineHandler,
    SandboxError,
    SandboxResult,
    SandboxSpec,
    StdioCommand,
    cgroups,
    netlaunch,
)
from services.runner.sandbox._common import Capture, result, run_process, sandbox_env
from services.runner.sandbox.quota import WorkspaceQuotas

log = logging.getLogger(__name__)

_LAUNCHER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC_DIRS = ("alternatives", "ssl", "ca-certificates")
_ETC_FILES = ("ld.so.cache", "nsswitch.conf", "localtime", "mime.types")
# The launcher joins the run's groups, then execs the rest of its argv (prlimit, then bwrap).
_JOIN_GROUPS = 'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; shift; exec "$@"'


def _root_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in _TOP_LEVEL:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{name}"]
    for name in _ETC_DIRS:
        if (Path("/etc") / name).is_dir():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for name in _ETC_FILES:
        if (Path("/etc") / name).exists():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return args


def _resolver_binds() -> list[str]:
    return ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"] if Path("/etc/resolv.conf").exists() else []


def _write_etc(run_dir: Path) -> list[str]:
    """A passwd/group naming only the sandbox user (tools like git and ssh look themselves up)."""
    files = {
        "passwd": f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:{SCRATCH}:/bin/sh\n",
        "group": f"sandbox:x:{SANDBOX_UID}:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
    }
    args: list[str] = []
    for name, text in files.items():
        (run_dir / name).write_text(text)
        args += ["--ro-bind", str(run_dir / name), f"/etc/{name}"]
    return args


def _prepare(run_dir: Path, spec: SandboxSpec) -> tuple[list[str], int]:
    """Write /etc files and the environment arguments; return the /etc binds and an fd for `--args`."""
    etc_args = _write_etc(run_dir)
    env_args = ["--clearenv"]
    for key, value in sandbox_env(spec).items():
        env_args += ["--setenv", key, value]
    args_file = run_dir / "args"
    args_file.write_bytes(b"".join(arg.encode() + b"\0" for arg in env_args))
    return etc_args, os.open(args_file, os.O_RDONLY)


def bwrap_argv(bwrap: str, spec: SandboxSpec, etc_args: list[str], args_fd: int, *,
               network: str | None = None) -> list[str]:
    limits = spec.limits
    # `network`: "own", bwrap runs in a fresh namespace routed by slirp4netns (netlaunch.py) and shares
    # it; "host", the host's namespace (no slirp4netns: loudly warned).
    net = [*_resolver_binds(), "--share-net"] if network else []
    argv = [
        bwrap, "--args", str(args_fd),
        "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", *net,
        *_root_binds(), *etc_args,
        "--proc", "/proc", "--dev", "/dev",
        # bwrap's /dev/shm is a plain directory of the /dev tmpfs: give it its own size limit.
        "--size", str(limits.tmpfs_bytes), "--tmpfs", "/dev/shm",
        "--size", str(limits.tmpfs_bytes), "--tmpfs", SCRATCH,
        "--bind", spec.workspace, spec.workdir,
    ]  # fmt: skip
    # Parents before children: a later mount over a parent hides binds made beneath it.
    for bind in sorted(spec.binds, key=lambda b: b.target.rstrip("/").count("/")):
        argv += ["--ro-bind", bind.source, bind.target]
    # bwrap's root is a tmpfs the sandbox user owns: make it read-only, or it is unbounded scratch.
    argv += [
        "--remount-ro", "/", "--chdir", spec.workdir, "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--cap-drop", "ALL", "--hostname", "sandbox", "--", *spec.argv,
    ]  # fmt: skip
    return argv


def _tasks_of_my_uid() -> int:
    """Threads of every process of our real uid: what RLIMIT_NPROC counts against."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1"))
    return count


def _launcher(prlimit: str, spec: SandboxSpec, group: cgroups.Group | None, busy_tasks: int) -> list[str]:
    limits = spec.limits
    rlimits = [f"--fsize={limits.file_bytes}", "--core=0"]
    if group is None:
        rlimits.append(f"--as={limits.memory_bytes}")
        if busy_tasks:
            # RLIMIT_NPROC counts every task of the uid (the runner's threads and the other sandboxes
            # too): allow what runs now plus this sandbox's pids. Approximate, but it stops a fork bomb.
            rlimits.append(f"--nproc={busy_tasks + limits.pids}")
    prefix: list[str] = []
    if group is not None:
        prefix = ["/bin/sh", "-c", _JOIN_GROUPS, "sh", *group.procs_files, "--"]
    return [*prefix, prlimit, *rlimits, "--"]


_ARGS_FD = 3
# The stdio launcher opens the sandbox's arguments file as fd 3 (bwrap `--args 3`), then execs the rest.
_OPEN_ARGS = 'exec 3<"$0" && exec "$@"'
_SLIRP = shutil.which("slirp4netns")
_warned_shared_net: list[bool] = []


def _network_mode() -> str:
    """"own" (a namespace of its own, routed out by slirp4netns: needs root to make it) or "host" (shared,
    loudly warned: the sandbox reaches the host's loopback services)."""
    if _SLIRP is not None and os.geteuid() == 0:
        return "own"
    if not _warned_shared_net:
        _warned_shared_net.append(True)
        log.warning("networked sandboxes share the host's network namespace and reach its loopback services "
                    "(an own one needs slirp4netns and a root runner)", extra={"slirp4netns": _SLIRP is not None})
    return "host"


class BwrapSandbox:
    name = "bwrap"

    def __init__(self, *, use_cgroups: bool | None = None, workspace_bytes: int = WORKSPACE_BYTES) -> None:
        """`use_cgroups`: None probes this host; False forces the prlimit fallback (as in an unprivileged pod).
        `workspace_bytes`: total size of each workspace (quota.py; 0 = unbounded)."""
        self.quotas = WorkspaceQuotas(workspace_bytes)
        # Absolute paths: the launcher runs with the sandbox's environment, whose PATH is the caller's.
        self._bwrap = shutil.which("bwrap")
        self._prlimit = shutil.which("prlimit")
        self._use_cgroups = use_cgroups

    async def _cgroups_ok(self) -> bool:
        if self._use_cgroups is None:
            self._use_cgroups = await asyncio.to_thread(cgroups.available)
            if not self._use_cgroups:
                log.warning("bwrap sandbox: cgroup v1 not writable here; memory and pids by prlimit, cpu unlimited")
        return self._use_cgroups

    async def run(
        self, spec: SandboxSpec, *, on_line: LineHandler | None = None, stop: asyncio.Event | None = None
    ) -> SandboxResult:
        if self._bwrap is None or self._prlimit is None:
            raise SandboxError("bwrap or prlimit not found: apt-get install bubblewrap util-linux")
        if not await asyncio.to_thread(os.path.isdir, spec.workspace):
            raise SandboxError("the sandbox workspace is not a directory")
        async with self.quotas.hold(spec.workspace):
            return await self._run(spec, on_line, stop)

    async def _run(self, spec: SandboxSpec, on_line: LineHandler | None, stop: asyncio.Event | None) -> SandboxResult:
        assert self._bwrap is not None and self._prlimit is not None  # run() checked both
        started = time.monotonic()
        out = Capture(spec.limits.output_bytes, on_line)
        err = Capture(spec.limits.output_bytes)
        group: cgroups.Group | None = None
        run_dir: Path | None = None
        args_fd = -1
        try:
            group = await cgroups.make(spec.label, spec.limits) if await self._cgroups_ok() else None
            run_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="botburrow-bwrap-"))
            etc_args, args_fd = await asyncio.to_thread(_prepare, run_dir, spec)
            # Root ignores RLIMIT_NPROC, and with cgroups the pids group does the job.
            busy = await asyncio.to_thread(_tasks_of_my_uid) if group is None and os.getuid() != 0 else 0
            launcher = _launcher(self._prlimit, spec, group, busy)
            argv = [*launcher, *bwrap_argv(self._bwrap, spec, etc_args, args_fd)]
            code, ending = await run_process(
                argv,
                env=_LAUNCHER_ENV,
                cwd="/",
                timeout_s=spec.limits.timeout_s,
                stop=stop,
                stdout=out,
                stderr=err,
                pass_fds=(args_fd,),
            )
            oom = group is not None and await asyncio.to_thread(group.oom_killed)
            full = await asyncio.to_thread(self.quotas.full, spec.workspace)
        finally:
            if args_fd >= 0:
                os.close(args_fd)
            if group is not None:
                await asyncio.to_thread(group.destroy)
            if run_dir is not None:
                await asyncio.to_thread(shutil.rmtree, run_dir, True)
        return result(code, ending, out, err, started, oom_killed=oom,
                      full_limit_bytes=self.quotas.limit_bytes if full else 0)

    async def stdio(self, spec: SandboxSpec, *, network: bool = False, limit_workspace: bool = True) -> StdioCommand:
        if self._bwrap is None or self._prlimit is None:
            raise SandboxError("bwrap or prlimit not found: apt-get install bubblewrap util-linux")
        stack = contextlib.AsyncExitStack()
        try:
            if limit_workspace:
                await stack.enter_async_context(self.quotas.hold(spec.workspace))
            group = await cgroups.make(spec.label, spec.limits) if await self._cgroups_ok() else None
            if group is not None:
                stack.push_async_callback(asyncio.to_thread, group.destroy)
            run_dir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="botburrow-bwrap-"))
            stack.push_async_callback(asyncio.to_thread, shutil.rmtree, run_dir, True)
            etc_args, args_fd = await asyncio.to_thread(_prepare, run_dir, spec)
            os.close(args_fd)  # reopened as fd 3 by the launcher below: a spawned process gets no other fds
            busy = await asyncio.to_thread(_tasks_of_my_uid) if group is None and os.getuid() != 0 else 0
            mode = _network_mode() if network else None
            inner = bwrap_argv(self._bwrap, spec, etc_args, _ARGS_FD, network=mode)
            if mode == "own":
                inner = [sys.executable, "-S", "-I", netlaunch.__file__, _SLIRP or "", "--", *inner]
            argv = ["/bin/sh", "-c", _OPEN_ARGS, str(run_dir / "args"),
                    *_launcher(self._prlimit, spec, group, busy), *inner]
        except BaseException:
            await stack.aclose()
            raise
        return StdioCommand(argv[0], argv[1:], dict(_LAUNCHER_ENV), "/", stack.aclose)

    async def sweep(self, *, stale_after_s: float | None = None) -> int:
        # Sandboxed processes die with their runner (--die-with-parent); only its cgroups can be left, and
        # their names carry the owner's pid, which this host can always check (no age cut-off needed).
        groups = await asyncio.to_thread(cgroups.sweep) if await self._cgroups_ok() else 0
        return groups + await self.quotas.sweep()

    async def close(self) -> None:
        await self.quotas.close()
