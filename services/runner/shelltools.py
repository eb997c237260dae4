"""Shell and file tools for the native loop (contract §4 step 3), offered only with `shell.enabled`.

Commands run in the activation's sandbox (`SANDBOX_BACKEND`), in its workspace, within
`timeout_seconds`. A command line is refused unless its program is in `allowed_commands` (when the
list is given); a `blocked_patterns` entry anywhere in the line blocks it (substring, contract §4); and,
when in doubt, it blocks: shell operators that could chain a second program (`;`, `&&`, `|`, `$(`,
backticks, redirections) are refused, since only the first program would have been checked.
File tools are confined to the workspace: a path that resolves outside it (`..`, symlinks) is refused.
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

from schemas.agent import Shell
from services.runner.loop import ToolOutcome
from services.runner.sandbox import Limits, Sandbox, SandboxSpec
from services.runner.transcript import ToolSpec

SERVER = "shell"
CHAINING = (";", "&&", "||", "|", "`", "$(", ">", "<", "\n", "&")
MAX_FILE_BYTES = 256 * 1024
MAX_OUTPUT_CHARS = 16 * 1024

_STR = {"type": "string"}


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def refusal(command: str, shell: Shell) -> str | None:
    """Why `command` may not run under `shell`, or None."""
    for pattern in shell.blocked_patterns:
        if pattern and pattern in command:
            return f"blocked: the command contains {pattern!r}"
    for operator in CHAINING:
        if operator in command:
            return f"blocked: shell operator {operator!r} is not allowed (run one program per call)"
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"blocked: cannot parse the command ({exc})"
    if not argv:
        return "blocked: empty command"
    program = PurePosixPath(argv[0]).name
    if shell.allowed_commands and program not in shell.allowed_commands:
        return f"blocked: {program!r} is not in allowed_commands ({', '.join(shell.allowed_commands)})"
    return None


class ShellTools:
    """`shell__run`, `files__read`, `files__write`, `files__list` for one activation."""

    def __init__(self, shell: Shell, workspace: Path, sandbox: Sandbox, activation_id: str) -> None:
        self.shell, self.workspace, self.sandbox = shell, workspace.resolve(), sandbox
        self.activation_id = activation_id
        self._tools = {
            "shell__run": (ToolSpec("shell__run", "Run one program in the workspace (no pipes or chaining).",
                                    _schema({"command": _STR}, ["command"])), self._run),
            "files__read": (ToolSpec("files__read", "Read a text file of the workspace.",
                                     _schema({"path": _STR}, ["path"])), self._read),
            "files__write": (ToolSpec("files__write", "Write a text file in the workspace.",
                                      _schema({"path": _STR, "content": _STR}, ["path", "content"])), self._write),
            "files__list": (ToolSpec("files__list", "List a directory of the workspace.",
                                     _schema({"path": _STR}, [])), self._list),
        }

    def specs(self) -> list[ToolSpec]:
        return [spec for spec, _ in self._tools.values()]

    def handles(self, name: str) -> bool:
        return name in self._tools

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutcome:
        _, run = self._tools[name]
        try:
            text = await run(arguments)
        except (KeyError, TypeError) as exc:
            return ToolOutcome(f"bad arguments for {name}: {exc}", is_error=True, server=SERVER)
        except PermissionError as exc:
            return ToolOutcome(str(exc), is_error=True, server=SERVER)
        except OSError as exc:
            return ToolOutcome(f"{name} failed: {exc.strerror or exc}", is_error=True, server=SERVER)
        return ToolOutcome(text, server=SERVER)

    def _inside(self, relative: str) -> Path:
        path = (self.workspace / relative).resolve()
        if path != self.workspace and not path.is_relative_to(self.workspace):
            raise PermissionError(f"{relative!r} is outside the workspace")
        return path

    async def _run(self, arguments: dict[str, Any]) -> str:
        command = str(arguments["command"])
        reason = refusal(command, self.shell)
        if reason:
            raise PermissionError(reason)
        result = await self.sandbox.run(SandboxSpec(
            argv=shlex.split(command), workspace=str(self.workspace), label=self.activation_id,
            limits=Limits(timeout_s=float(self.shell.timeout_seconds))))
        status = "timed out" if result.timed_out else f"exit {result.exit_code}"
        output = (result.stdout + ("\n[stderr]\n" + result.stderr if result.stderr else ""))[-MAX_OUTPUT_CHARS:]
        return f"{status}\n{output}"

    async def _read(self, arguments: dict[str, Any]) -> str:
        path = self._inside(str(arguments["path"]))
        data = await asyncio.to_thread(path.read_bytes)
        return data[:MAX_FILE_BYTES].decode("utf-8", errors="replace")

    async def _write(self, arguments: dict[str, Any]) -> str:
        path, content = self._inside(str(arguments["path"])), str(arguments["content"])
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_text, content)
        return f"wrote {len(content.encode())} bytes to {path.relative_to(self.workspace)}"

    async def _list(self, arguments: dict[str, Any]) -> str:
        path = self._inside(str(arguments.get("path") or "."))
        entries = await asyncio.to_thread(lambda: sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir()))
        return "\n".join(entries) or "(empty)"
