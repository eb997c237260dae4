"""Per-sandbox cgroup v1 groups (memory, pids, cpu) for the bwrap backend, when this host lets us make them.

bubblewrap has no limits of its own. When the v1 controllers are mounted writable (root on a VM, a
privileged pod) each run gets its own group under this process's group; otherwise the backend falls back
to prlimit. All file work runs in a thread: cgroupfs writes are syscalls that can block.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from pathlib import Path

from services.runner.sandbox import Limits

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpu")
PREFIX = "botburrow-sbx-"
_CPU_PERIOD_US = 100_000


def _own_path(controller: str) -> str:
    """This process's group in a v1 hierarchy ("/" when not found)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, names, path = line.split(":", 2)
            if controller in names.split(","):
                return path
    except OSError:
        pass
    return "/"


def _parents() -> dict[str, Path] | None:
    parents = {c: ROOT / c / _own_path(c).lstrip("/") for c in CONTROLLERS}
    if all(os.access(p, os.W_OK) and (p / "cgroup.procs").exists() for p in parents.values()):
        return parents
    return None


def available() -> bool:
    """Whether per-run groups can be made here (probed by making and removing one)."""
    parents = _parents()
    if parents is None:
        return False
    probe = f"{PREFIX}probe-{uuid.uuid4().hex[:8]}"
    made: list[Path] = []
    try:
        for parent in parents.values():
            (parent / probe).mkdir()
            made.append(parent / probe)
        return True
    except OSError:
        return False
    finally:
        for path in made:
            path.rmdir()


class Group:
    """One sandbox's groups; `procs_files` are written with the launcher's pid before it execs bwrap."""

    def __init__(self, label: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:64]
        # The owner pid in the name lets a sweep spare groups of runners that are still alive.
        self.name = f"{PREFIX}{os.getpid()}-{safe}-{uuid.uuid4().hex[:8]}"
        parents = _parents()
        if parents is None:
            raise OSError("cgroup v1 controllers are not writable")
        self.dirs = {c: parent / self.name for c, parent in parents.items()}

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def create(self, limits: Limits) -> None:
        for path in self.dirs.values():
            path.mkdir()
        mem = self.dirs["memory"]
        (mem / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
        if (mem / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: swap = memory
            (mem / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_bytes))
        (self.dirs["pids"] / "pids.max").write_text(str(limits.pids))
        cpu = self.dirs["cpu"]
        (cpu / "cpu.cfs_period_us").write_text(str(_CPU_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(max(1000, int(limits.cpus * _CPU_PERIOD_US))))

    def oom_killed(self) -> bool:
        try:
            text = (self.dirs["memory"] / "memory.oom_control").read_text()
        except OSError:
            return False
        counts = dict(line.split() for line in text.splitlines() if line.strip())
        return int(counts.get("oom_kill", "0")) > 0

    def destroy(self) -> None:
        _kill_and_remove(list(self.dirs.values()))


def _kill_and_remove(dirs: list[Path]) -> None:
    for _ in range(50):  # a dying process leaves the group a moment after SIGKILL
        left = False
        for path in dirs:
            if not path.exists():
                continue
            for pid in _pids(path):
                left = True
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                path.rmdir()
            except OSError:
                left = True
        if not left:
            return
        time.sleep(0.02)


def _owner_alive(name: str) -> bool:
    owner = name.removeprefix(PREFIX).split("-", 1)[0]
    if not owner.isdigit():
        return False
    try:
        os.kill(int(owner), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def sweep() -> int:
    """Kill and remove groups left by an earlier runner; return how many sandboxes were removed."""
    parents = _parents()
    if parents is None:
        return 0
    names: set[str] = set()
    for parent in parents.values():
        names.update(p.name for p in parent.iterdir() if p.is_dir() and p.name.startswith(PREFIX))
    names = {name for name in names if not _owner_alive(name)}
    for name in names:
        _kill_and_remove([parent / name for parent in parents.values()])
    return len(names)


async def make(label: str, limits: Limits) -> Group:
    group = Group(label)
    try:
        await asyncio.to_thread(group.create, limits)
    except BaseException:
        await asyncio.to_thread(group.destroy)
        raise
    return group
