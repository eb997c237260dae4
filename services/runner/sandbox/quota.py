"""A total size limit for sandbox workspaces (SANDBOX_WORKSPACE_MB), for both real backends.

Each workspace a sandbox runs in is backed, from its first run on, by an ext4 file system of the
limit's size on a loop device, mounted over the workspace path on the host: the sandbox (bwrap bind or
docker bind), the runner's own file tools and the `filesystem` MCP server all write into it, and a write
past the limit fails with ENOSPC. Its backing file is unlinked as soon as it is mounted, so the space
goes back when the mount goes; there is nothing to delete later.

Mounting: a fresh file system is mounted at a private place, the workspace's current contents are
copied in (a workspace already over the limit is refused), the workspace is emptied, and the file
system is moved onto it. Unmounting leaves an empty directory, as the workspace was when it was emptied.

A mount ends when its workspace is empty and no run uses it at two sweeps in a row (the owner removed
the workspace: `rmtree` empties it, its final rmdir fails on the mount point), when the backend closes,
at interpreter exit, or at the start-up sweep of the next runner (mounts of a dead runner's pid).

Needs root (mount, loop devices) and mkfs.ext4. Without them the limit is not enforced and a warning
says so once: then give the runner's work directory a size-limited volume.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from services.runner.sandbox import SandboxError

log = logging.getLogger(__name__)

MiB = 1 << 20
STORE = Path("/var/tmp/botburrow-workspaces")
#: Free space below this after a run means the run hit the limit.
FULL_BELOW_BYTES = 1 * MiB
_TOOLS = ("mkfs.ext4", "mount", "umount", "losetup")


def supported() -> bool:
    return os.geteuid() == 0 and Path("/dev/loop-control").exists() and all(shutil.which(t) for t in _TOOLS)


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise OSError(f"{argv[0]} failed: {done.stderr.strip()[:300]}")


def _mount(workspace: Path, limit_bytes: int, store: Path) -> None:
    """Back `workspace` with a file system of `limit_bytes` (see the module doc)."""
    store.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    image, staging = store / f"{stem}.img", store / f"{stem}.mnt"
    with open(image, "wb") as backing:
        backing.truncate(limit_bytes)
    staging.mkdir(mode=0o700)
    mounted = False
    try:
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "nodiscard", str(image))
        _run("mount", "-o", "loop,nosuid,nodev", str(image), str(staging))
        mounted = True
        (staging / "lost+found").rmdir()
        st = workspace.stat()
        os.chown(staging, st.st_uid, st.st_gid)
        os.chmod(staging, st.st_mode & 0o7777)
        try:
            shutil.copytree(workspace, staging, symlinks=True, dirs_exist_ok=True)
        except (OSError, shutil.Error) as exc:
            raise OSError(f"the workspace is larger than its limit of {limit_bytes // MiB} MiB") from exc
        _empty(workspace)
        _run("mount", "--move", str(staging), str(workspace))
        mounted = False
    finally:
        if mounted:
            _run("umount", str(staging))
        image.unlink(missing_ok=True)  # the loop device keeps it while mounted
        with contextlib.suppress(OSError):
            staging.rmdir()


def _empty(path: Path) -> None:
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _unmount(workspace: Path) -> None:
    # Loop mounts made by `mount -o loop` are autoclear: the device goes with the mount.
    _run("umount", str(workspace))


def is_empty(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return True


def free_bytes(path: str | Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass
class _Mount:
    users: int = 0
    idle_sweeps: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class WorkspaceQuotas:
    """The workspace mounts of one backend. `limit_bytes` 0 turns the limit off."""

    def __init__(self, limit_bytes: int, *, store: Path = STORE) -> None:
        self.limit_bytes, self.store = limit_bytes, store
        self.enforced = limit_bytes > 0 and supported()
        if limit_bytes > 0 and not self.enforced:
            log.warning("sandbox workspace size limit NOT enforced here (needs root, loop devices and mkfs.ext4)")
        self._mounts: dict[Path, _Mount] = {}
        self._lock = asyncio.Lock()
        if self.enforced:
            atexit.register(self._unmount_all)

    @contextlib.asynccontextmanager
    async def hold(self, workspace: str) -> AsyncIterator[None]:
        """The workspace, size-limited (mounted on first use), for the duration of one run."""
        if not self.enforced:
            yield
            return
        path = Path(await asyncio.to_thread(os.path.realpath, workspace))
        async with self._lock:
            mount = self._mounts.setdefault(path, _Mount())
            mount.users += 1
            mount.idle_sweeps = 0
        try:
            async with mount.lock:
                if not await asyncio.to_thread(os.path.ismount, path):
                    try:
                        await asyncio.to_thread(_mount, path, self.limit_bytes, self.store)
                    except OSError as exc:  # e.g. the workspace is already larger than the limit
                        raise SandboxError(f"the workspace could not be size-limited: {exc}") from exc
            yield
        finally:
            mount.users -= 1

    def full(self, workspace: str) -> bool:
        """Whether the last run used the workspace up (then a write past the limit failed)."""
        return self.enforced and free_bytes(workspace) < FULL_BELOW_BYTES

    async def sweep(self) -> int:
        """Unmount workspaces that were empty and unused at two sweeps in a row; also leftovers of
        dead runners. Returns how many were unmounted."""
        gone = 0
        async with self._lock:
            for path, mount in list(self._mounts.items()):
                if mount.users or not await asyncio.to_thread(is_empty, path):
                    mount.idle_sweeps = 0
                    continue
                mount.idle_sweeps += 1
                if mount.idle_sweeps >= 2:
                    del self._mounts[path]
                    gone += await asyncio.to_thread(self._release, path)
        return gone + await asyncio.to_thread(sweep_dead, self.store)

    def _release(self, path: Path) -> int:
        try:
            if os.path.ismount(path):
                _unmount(path)
                return 1
        except OSError as exc:
            log.warning("could not unmount a sandbox workspace", extra={"error": str(exc)})
        return 0

    def _unmount_all(self) -> None:
        for path in list(self._mounts):
            self._mounts.pop(path, None)
            self._release(path)

    async def close(self) -> None:
        if self.enforced:
            await asyncio.to_thread(self._unmount_all)


def _loop_backing(source: str) -> str:
    name = Path(source).name
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return ""


def sweep_dead(store: Path = STORE) -> int:
    """Unmount workspace file systems whose runner (pid in the backing file's name) is gone."""
    removed = 0
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        if " - " not in line or not fields[4].startswith("/"):
            continue
        source = line.split(" - ", 1)[1].split()[1]
        backing = _loop_backing(source) if source.startswith("/dev/loop") else ""
        if not backing.startswith(f"{store}/"):
            continue
        owner = Path(backing).name.split("-", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(OSError):
                _unmount(Path(fields[4].encode().decode("unicode_escape")))
                removed += 1
    return removed
