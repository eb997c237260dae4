"""Pieces every backend shares: the sandbox environment, capped output capture, exit statuses."""

from __future__ import annotations

import asyncio
import enum
import inspect
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from services.runner.sandbox import DEFAULT_PATH, SCRATCH, LineHandler, SandboxResult, SandboxSpec

LABEL_KEY = "services.runner.sandbox"
T = TypeVar("T")


class Ending(enum.Enum):
    """Why a run was cut short."""

    TIMED_OUT = "timed_out"
    STOPPED = "stopped"


# Lines longer than this are passed to on_line cut (the capture still counts every byte).
_MAX_LINE_BYTES = 8 * (1 << 20)


def sandbox_env(spec: SandboxSpec) -> dict[str, str]:
    """The command's whole environment: spec.env, with PATH and HOME defaults."""
    env = {"PATH": DEFAULT_PATH, "HOME": SCRATCH}
    env.update(spec.env)
    return env


def exit_code(returncode: int) -> int:
    """asyncio reports death by signal N as -N; report it as the shell does (128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


class Capture:
    """Collects one stream up to `cap` bytes; calls `on_line` with every complete line."""

    def __init__(self, cap: int, on_line: LineHandler | None = None) -> None:
        self.cap = cap
        self.on_line = on_line
        self.buffer = bytearray()
        self.truncated = False
        self._partial = bytearray()

    async def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.buffer)
        if len(chunk) > room:
            self.truncated = True
        if room > 0:
            self.buffer += chunk[:room]
        if self.on_line is None:
            return
        self._partial += chunk
        while (end := self._partial.find(b"\n")) >= 0:
            line = bytes(self._partial[:end])
            del self._partial[: end + 1]
            await self._emit(line)
        if len(self._partial) > _MAX_LINE_BYTES:
            await self._emit(bytes(self._partial))
            self._partial.clear()

    async def finish(self) -> None:
        if self.on_line is not None and self._partial:
            await self._emit(bytes(self._partial))
            self._partial.clear()

    async def _emit(self, line: bytes) -> None:
        assert self.on_line is not None
        outcome = self.on_line(line.rstrip(b"\r").decode("utf-8", "replace"))
        if inspect.isawaitable(outcome):
            await outcome

    def text(self) -> str:
        return self.buffer.decode("utf-8", "replace")

    async def drain(self, chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            await self.feed(chunk)
        await self.finish()


def result(code: int, ending: Ending | None, out: Capture, err: Capture, started_s: float, *,
           oom_killed: bool = False, full_limit_bytes: int = 0) -> SandboxResult:
    """The one way every backend reports a finished run (`started_s`: time.monotonic() at its start).
    `full_limit_bytes`: the run used up a workspace of that size (said on stderr, for whoever reads it)."""
    stderr = err.text()
    if full_limit_bytes:
        stderr += f"\nbotburrow: the workspace size limit of {full_limit_bytes >> 20} MiB was reached\n"
    return SandboxResult(exit_code=code, stdout=out.text(), stderr=stderr, stdout_truncated=out.truncated,
                         stderr_truncated=err.truncated, timed_out=ending is Ending.TIMED_OUT,
                         stopped=ending is Ending.STOPPED, oom_killed=oom_killed,
                         workspace_full=bool(full_limit_bytes), duration_s=time.monotonic() - started_s)


async def read_chunks(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while chunk := await stream.read(65536):
        yield chunk


def kill_group(pid: int) -> None:
    """SIGKILL the whole process group led by `pid` (children started with start_new_session)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def wait_bounded(waiter: Awaitable[T], timeout_s: float, stop: asyncio.Event | None) -> T | Ending:
    """Await `waiter` unless the wall clock runs out or `stop` is set first (then it is cancelled)."""
    task = asyncio.ensure_future(waiter)
    stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
    try:
        done, _ = await asyncio.wait(
            {task, *([stopper] if stopper else [])}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        if stopper is not None:
            stopper.cancel()
        if not task.done():
            task.cancel()
    if task in done:
        return task.result()
    return Ending.STOPPED if done else Ending.TIMED_OUT


async def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    timeout_s: float,
    stop: asyncio.Event | None,
    stdout: Capture,
    stderr: Capture,
    pass_fds: tuple[int, ...] = (),
) -> tuple[int, Ending | None]:
    """Run argv in a new session with stdin closed; SIGKILL its group at the deadline or on `stop`."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
        pass_fds=pass_fds,
    )
    assert proc.stdout is not None and proc.stderr is not None
    readers = asyncio.gather(stdout.drain(read_chunks(proc.stdout)), stderr.drain(read_chunks(proc.stderr)))
    # A failing on_line handler ends the run (its error is raised below) instead of leaving the command
    # blocked on a full pipe until the deadline.
    readers.add_done_callback(
        lambda done: None if done.cancelled() or done.exception() is None else kill_group(proc.pid))
    ending: Ending | None = None
    try:
        outcome = await wait_bounded(proc.wait(), timeout_s, stop)
        ending = outcome if isinstance(outcome, Ending) else None
    finally:
        # Always kill the group: the leader may have exited while children hold the pipes open.
        kill_group(proc.pid)
        if proc.returncode is None:
            await proc.wait()
    try:
        await asyncio.wait_for(readers, timeout=5)
    except TimeoutError:
        readers.cancel()
    assert proc.returncode is not None
    return exit_code(proc.returncode), ending
