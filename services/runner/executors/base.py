"""What every CLI executor shares: the job, the MCP wiring seam, the run, the verdict.

A `CliThinker` opens a model-gateway session (the CLI gets a per-activation token, never a key),
asks its `Flavor` for the invocation (argv, environment built from nothing, config files in a
per-activation run directory with a fresh HOME), runs it through a `ProcessRunner` within the
activation's deadline, and lets the flavor parse the output. Success is decided from the parsed
output, never the exit code alone (the CLIs' exit codes lie); any failure raises `LoopFailed` with a
reason naming the CLI, so the activation fails with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from botburrow.secrets import redact
from services.runner.executors.process import Completed, DirectRunner, ProcessRunner
from services.runner.executors.streams import json_lines
from services.runner.executors.text import safe_text, strip_markup
from services.runner.gateway import GatewaySession, ModelGateway
from services.runner.loop import LoopFailed, ToolOutcome
from services.runner.seams import ExecutorUnavailable, ThinkRequest
from services.runner.transcript import ToolCall

log = logging.getLogger(__name__)

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
#: The runner's CA trust store (public certificates only, never /etc/ssl/private): some CLIs' HTTP clients
#: refuse to start without one (Goose: "builder error"), and a bare base image has none.
CA_CERTS_DIR = Path("/etc/ssl/certs")
#: A failed CLI's own last words in the failure reason: at most this many lines, and characters (from the end).
ERROR_TAIL_LINES = 6
ERROR_TAIL_CHARS = 400
#: The failure a flavor parsed, in the reason: cut after redaction (a cut secret would not be found), so a
#: flavor keeps more of what it quotes (PARSE_CUT_CHARS) and `_verdict` cuts.
PARSED_ERROR_CHARS = 300
PARSE_CUT_CHARS = 4 * PARSED_ERROR_CHARS
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class McpEntry:
    """One MCP server as the CLI starts it: a stdio command (the relay), never holding a credential."""

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


class McpWiring(Protocol):
    """The stdio entries a CLI config names for the activation's MCP servers (started runner-side)."""

    def open(self, request: ThinkRequest) -> contextlib.AbstractAsyncContextManager[list[McpEntry]]: ...


class ToolboxRelay:
    """The default: every server of the activation's toolbox (`McpToolbox`, hub included), each reached
    through `python -m services.runner.mcp.relay <socket> <server>`; the servers and their credentials stay on
    the runner side. A toolbox without a relay (hub tools only) gives the CLI no MCP servers."""

    @contextlib.asynccontextmanager
    async def open(self, request: ThinkRequest) -> AsyncIterator[list[McpEntry]]:
        relay = getattr(request.toolbox, "relay", None)
        servers: list[str] = list(getattr(request.toolbox, "servers", []))
        if relay is None or not servers:
            yield []
            return
        socket = await relay()
        yield [McpEntry(server, sys.executable, ("-m", "services.runner.mcp.relay", str(socket), server))
               for server in servers]


@dataclass(frozen=True)
class CliJob:
    """Everything a flavor needs to build one invocation."""

    request: ThinkRequest
    gateway: GatewaySession
    mcp: list[McpEntry]
    binary: str
    run_dir: Path  # outside the workspace: configs, logs, HOME
    home: Path
    workspace: Path
    timeout_s: float

    @property
    def task(self) -> str:
        """The prompt as argv and a UTF-8 file can carry it (`text.safe_text`): flavors use this, never
        `request.task`."""
        return safe_text(self.request.task)

    @property
    def system(self) -> str:
        return safe_text(self.request.system)

    @property
    def model(self) -> str:
        return self.request.definition.config.brain.model

    @property
    def provider(self) -> str:
        return self.request.definition.config.brain.provider

    @property
    def shell_enabled(self) -> bool:
        return self.request.definition.config.capabilities.shell.enabled

    @property
    def max_turns(self) -> int:
        return self.request.definition.config.behavior.max_iterations

    def base_env(self) -> dict[str, str]:
        """The environment from nothing: a PATH that finds the CLI, a fresh HOME, a UTF-8 locale."""
        bin_dir = str(Path(self.binary).parent)
        return {"PATH": f"{bin_dir}:{SYSTEM_PATH}", "HOME": str(self.home), "LANG": "C.UTF-8",
                "TMPDIR": str(self.run_dir / "tmp")}

    def write(self, name: str, text: str) -> Path:
        path = self.run_dir / name
        path.write_text(text, encoding="utf-8")  # whatever the runner's locale
        return path


@dataclass
class ToolEvent:
    call_id: str
    name: str
    arguments: Any
    result: str = ""
    is_error: bool = False
    server: str = ""


@dataclass
class Parsed:
    """A CLI's structured output, read: the answer, the tool calls it made, and why it failed (if so)."""

    text: str = ""
    tools: list[ToolEvent] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]


class Flavor(Protocol):
    name: str  # the config `type`
    binary_name: str
    # Models the CLI calls for its own housekeeping (titles, summaries) besides the config's brain.model:
    # the only other models the gateway lets this activation call. Read-only: each flavor's own tuple.
    @property
    def housekeeping_models(self) -> tuple[str, ...]: ...

    def invocation(self, job: CliJob) -> Invocation: ...

    def parse(self, job: CliJob, done: Completed) -> Parsed: ...


def find_binary(name: str, tools: Path, search_path: str | None) -> str | None:
    """A CLI from the pinned tools (`tools`: BOTBURROW_TOOLS_DIR, laid out by setup.sh), else on `search_path`
    (the runner's PATH)."""
    for candidate in (tools / "node_modules" / ".bin" / name, tools / name / "bin" / name,
                      tools / "node_modules" / "@aaif" / "goose-binary-linux-x64" / "bin" / name):
        if candidate.is_file():
            return str(candidate)
    return shutil.which(name, path=search_path)


def interpreter(program: str, search_path: str) -> Path | None:
    """The interpreter a script's `#!` line names (`/usr/bin/env node` looked up on `search_path`), or
    None for a binary. A sandbox whose image lacks it (the docker base image has no node) needs it shown."""
    try:
        with open(program, "rb") as handle:
            first = handle.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if words and Path(words[0]).name == "env":
        words = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        found = shutil.which(words[0], path=search_path) if words else None
        return Path(found) if found else None
    return Path(words[0]) if words else None


def _python_reads() -> list[Path]:
    """The Python that runs the relay and the loopback forwarder: this venv and its base installation,
    or only its interpreter and standard library when that installation is the system's /usr."""
    import botburrow

    paths = [Path(sys.prefix), Path(botburrow.__file__).resolve().parents[1]]
    base = Path(sys.base_prefix)
    if len(base.parts) > 2:
        return [*paths, base]
    return [*paths, Path(sys.executable).resolve(), Path(sysconfig.get_path("stdlib")),
            Path(sysconfig.get_path("platstdlib"))]


def reads(job: CliJob) -> list[Path]:
    """Host paths the CLI must see (read-only in a sandbox): its run directory, the pinned tools, the
    interpreter a script CLI names, the Python that runs the MCP relay, the CA certificates, the relay's
    socket directory,
    and the folders of a custom command and its args as the definition names them (never paths from
    the task text)."""
    paths = [job.run_dir, Path(job.binary).resolve().parent, job.request.config.tools_dir, *_python_reads(),
             CA_CERTS_DIR]
    executor = job.request.definition.config.executor
    named = [executor.command, *executor.args] if executor is not None else []
    for program in {job.binary, *(e.command for e in job.mcp)}:
        if (found := interpreter(program, job.base_env()["PATH"])) is not None:
            paths.append(found)
    for arg in [*named, *(arg for entry in job.mcp for arg in entry.args)]:
        folder = Path(arg).parent
        if arg.startswith("/") and len(folder.parts) > 2:  # never `/` or a top-level folder like /etc
            paths.append(folder)
    return paths


class CliThinker:
    def __init__(self, flavor: Flavor, gateway: ModelGateway, *, runner: ProcessRunner | None = None,
                 mcp: McpWiring | None = None, binary: str | None = None) -> None:
        self.flavor, self.gateway = flavor, gateway
        self.runner = runner or DirectRunner()
        self.mcp = mcp or ToolboxRelay()
        self.binary = binary

    def _prepare(self, request: ThinkRequest) -> tuple[str | None, Path, Path]:
        locate = getattr(self.flavor, "locate", None)  # `custom` takes its command from the definition
        config = request.config
        binary = self.binary or (locate(request) if locate else
                                 find_binary(self.flavor.binary_name, config.tools_dir, config.search_path or None))
        run_dir = Path(tempfile.mkdtemp(prefix=f"bb-{self.flavor.name}-"))
        # Traversable, not listable: a docker sandbox's user may differ from ours and must read its configs.
        run_dir.chmod(0o711)
        for sub in ("home", "tmp"):
            (run_dir / sub).mkdir()
        # Not inside the run directory: a sandbox shows that read-only, which would hide a writable child.
        workspace = request.tools.workspace or Path(tempfile.mkdtemp(prefix=f"bb-{self.flavor.name}-ws-"))
        return (binary if binary and Path(binary).is_file() else None), run_dir, workspace

    async def think(self, request: ThinkRequest) -> str:
        name = self.flavor.name
        timeout_s = request.budget.remaining_s()
        if timeout_s <= 0:
            raise LoopFailed("timeout")
        binary, run_dir, workspace = await asyncio.to_thread(self._prepare, request)
        try:
            if binary is None:
                raise ExecutorUnavailable(
                    f"executor {name!r} is not available: CLI {self.flavor.binary_name!r} is not installed here")
            async with self.mcp.open(request) as entries, self.gateway.session(
                    activation_id=request.activation_id, brain=request.definition.config.brain,
                    access=request.config.access, secret_env=request.secrets, recorder=request.recorder,
                    budget=request.budget, housekeeping_models=self.flavor.housekeeping_models) as session:
                job = CliJob(request=request, gateway=session, mcp=entries, binary=binary, run_dir=run_dir,
                             home=run_dir / "home", workspace=workspace, timeout_s=timeout_s)
                invocation = await asyncio.to_thread(self.flavor.invocation, job)  # writes its config files
                started_s = time.monotonic()
                done = await self.runner.run(invocation.argv, env=invocation.env, cwd=workspace,
                                             timeout_s=timeout_s, stop=session.exceeded,
                                             binds=reads(job), label=request.activation_id,
                                             ports=[self.gateway.bound_port])
                parsed = await asyncio.to_thread(self.flavor.parse, job, done)  # may read its log files
        finally:
            await asyncio.to_thread(shutil.rmtree, run_dir, True)
            if workspace != request.tools.workspace:
                await asyncio.to_thread(shutil.rmtree, workspace, True)
        log.info("cli finished", extra={
            "activation_id": request.activation_id, "executor": name, "exit_code": done.returncode,
            "timed_out": done.timed_out, "duration_s": round(time.monotonic() - started_s, 2),
            "model_turns": session.turns, "tool_calls": len(parsed.tools), "failed": parsed.error is not None})
        await self._record_tools(request, parsed)
        return self._verdict(name, done, parsed, session)

    @staticmethod
    async def _record_tools(request: ThinkRequest, parsed: Parsed) -> None:
        for index, event in enumerate(parsed.tools, 1):
            call = ToolCall(event.call_id or f"call-{index}", event.name, event.arguments)
            await request.recorder.tool(index, call, ToolOutcome(event.result, event.is_error, event.server), 0.0)

    @staticmethod
    def _verdict(name: str, done: Completed, parsed: Parsed, session: GatewaySession) -> str:
        if session.reason is not None:
            raise LoopFailed(session.reason)  # max_tokens / timeout, as the native loop names them
        if done.oom_killed:  # before the timeout: a CLI whose child was killed may hang until the deadline
            raise LoopFailed(f"{name}: out of memory (the sandbox's memory limit was hit)")
        if done.timed_out:
            raise LoopFailed("timeout")

        def scrub(text: str) -> str:
            # CLIs quote the URL they called, which carries the (dead, but still) activation token.
            return redact(text).replace(session.token, "[activation-token]")

        def failed(reason: str) -> LoopFailed:
            return LoopFailed(scrub(reason))

        tail = error_tail(done, scrub) if done.returncode != 0 or parsed.error is not None else ""
        if parsed.error is not None:
            # The parsed reason says what is missing; the CLI's own last lines say why (a crash's traceback).
            error = scrub(parsed.error)
            error = error if len(error) <= PARSED_ERROR_CHARS else error[:PARSED_ERROR_CHARS - 1] + "…"
            code = f"exited with {done.returncode}: " if done.returncode else ""
            raise failed(f"{name}: {error}" + (f" ({code}{tail})" if tail and tail not in error else ""))
        if done.returncode != 0:
            raise failed(f"{name}: exited with {done.returncode}: {tail or 'no output'}")
        answer = strip_markup(parsed.text)
        if not answer:
            raise LoopFailed(f"{name}: finished without a final answer")
        return answer


def error_tail(done: Completed, scrub: Callable[[str], str] = str) -> str:
    """A CLI's own last words: the last non-blank lines of its stderr (else of its stdout, without its JSON
    events), colour codes removed, joined with " | ", `scrub`bed (redacted) before being cut to at most
    ERROR_TAIL_LINES lines and ERROR_TAIL_CHARS characters from the end (a cut secret would not be found)."""
    def lines(raw: bytes, events_too: bool) -> list[str]:
        text = _ANSI.sub("", raw.decode("utf-8", "replace"))
        # Each line's end only: far more than is kept, so no secret in what is kept is cut here.
        kept = [line.strip()[-4 * ERROR_TAIL_CHARS:] for line in text.splitlines() if line.strip()]
        return kept if events_too else [line for line in kept if not any(json_lines(line.encode()))]

    found = lines(done.stderr, True) or lines(done.stdout, False)
    tail = scrub(" | ".join(found[-ERROR_TAIL_LINES:]))
    return tail if len(tail) <= ERROR_TAIL_CHARS else "…" + tail[-(ERROR_TAIL_CHARS - 1):]
