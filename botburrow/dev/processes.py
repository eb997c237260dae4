"""The processes `botburrow dev` starts: each in its own process group, none outliving it.

A stage runs in a session of its own (so a Ctrl-C on the terminal reaches `dev` only, which stops
everything in order), asks Linux to send it SIGTERM if `dev` itself dies (PR_SET_PDEATHSIG: even a
SIGKILL of `dev` leaves no orphan; the embedded nats-server asks the same), and is stopped with its
whole group, so whatever it started (a CLI, an MCP server) goes with it. `reap` is the last sweep:
whatever still runs with the stack's work directory on its command line (a nats-server whose start a
Ctrl-C interrupted, before the stack knew its pid).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn` of a child: SIGTERM when the thread that started it ends (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group `pid` leads (a child started with start_new_session), if any is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop_group(process: asyncio.subprocess.Process, sig: int, timeout_s: float) -> None:
    """`sig` to the leader, which stops its own work in order; after `timeout_s`, or once it has ended,
    SIGKILL to whatever of its group is left."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), timeout_s)
    kill_group(process.pid)
    await process.wait()


def reap(work_dir: Path) -> list[int]:
    """SIGKILL every process (and its group) whose command line names `work_dir`; their pids."""
    marker = f"{work_dir}/".encode()  # its files, not a sibling directory's
    reaped = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "cmdline").read_bytes() and int(entry.name) != os.getpid():
                reaped.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    for pid in reaped:
        kill_group(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return reaped
