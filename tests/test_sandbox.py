"""The sandbox interface against both real backends (bwrap, a private dockerd) and the local `none`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from services.runner.executors.process import SandboxRunner, sweep_once
from services.runner.sandbox import Bind, Limits, Sandbox, SandboxError, SandboxSpec, cgroups, create
from services.runner.sandbox._common import LABEL_KEY
from services.runner.sandbox.bwrap import BwrapSandbox
from services.runner.sandbox.docker import OWNER_LABEL, DockerSandbox

# Until tests/conftest.py registers it.


def spec(workspace: Path, script: str, **kw: Any) -> SandboxSpec:
    limits = kw.pop("limits", Limits(timeout_s=30))
    return SandboxSpec(argv=["python3", "-c", script], workspace=str(workspace), label="test", limits=limits, **kw)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


async def test_environment_is_only_what_the_spec_gives(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_ONLY_SETTING", "runner-value")
    script = "import os, json; print(json.dumps(dict(os.environ))); print(os.getuid(), os.getcwd())"
    result = await sandbox.run(spec(tmp_path, script, env={"GREETING": "hello"}))
    assert result.ok, result.stderr
    env_line, ident = result.stdout.splitlines()
    assert '"GREETING": "hello"' in env_line
    assert "RUNNER_ONLY_SETTING" not in env_line and "runner-value" not in env_line
    uid, cwd = ident.split()
    assert uid != "0" and cwd == "/workspace"


async def test_workspace_is_writable_and_binds_are_read_only(sandbox: Sandbox, tmp_path: Path) -> None:
    workspace, tools = tmp_path / "ws", tmp_path / "tools"
    workspace.mkdir()
    tools.mkdir()
    (tools / "tool.txt").write_text("tool-data")
    script = """
import errno
print(open('/opt/tools/tool.txt').read())
open('/workspace/out.txt', 'w').write('written')
for path in ('/opt/tools/new.txt', '/usr/new.txt', '/new.txt'):
    try:
        open(path, 'w')
        print('WROTE', path)
    except OSError as e:
        print('denied', path, errno.errorcode[e.errno])
"""
    result = await sandbox.run(spec(workspace, script, binds=(Bind(source=str(tools), target="/opt/tools"),)))
    assert result.ok, result.stderr
    assert result.stdout.startswith("tool-data")
    assert "WROTE" not in result.stdout and result.stdout.count("denied") == 3
    assert (workspace / "out.txt").read_text() == "written"
    assert sorted(p.name for p in tools.iterdir()) == ["tool.txt"]


async def test_stdout_lines_arrive_while_the_command_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    # The command waits for a file the handler writes on seeing its first line: without streaming it
    # would wait until the time limit.
    script = """
import os, time
print('ready', flush=True)
while not os.path.exists('/workspace/go'):
    time.sleep(0.01)
print('done')
"""
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)
        if line == "ready":
            await asyncio.to_thread((tmp_path / "go").write_text, "")

    result = await sandbox.run(spec(tmp_path, script, limits=Limits(timeout_s=20)), on_line=on_line)
    assert not result.timed_out and result.ok
    assert lines == ["ready", "done"]


async def test_stop_event_kills_the_run_early(sandbox: Sandbox, tmp_path: Path) -> None:
    stop = asyncio.Event()

    def on_line(line: str) -> None:
        if line == "ready":
            stop.set()

    script = "import time\nprint('ready', flush=True)\ntime.sleep(600)"
    result = await sandbox.run(spec(tmp_path, script, limits=Limits(timeout_s=120)), on_line=on_line, stop=stop)
    assert result.stopped and not result.timed_out and result.exit_code == 137 and not result.ok


async def test_a_failing_line_handler_ends_the_run_with_its_error(sandbox: Sandbox, tmp_path: Path) -> None:
    def on_line(line: str) -> None:
        raise ValueError(f"cannot parse {line}")

    script = "import time\nprint('garbage', flush=True)\ntime.sleep(600)"
    with pytest.raises(ValueError, match="cannot parse garbage"):
        await sandbox.run(spec(tmp_path, script, limits=Limits(timeout_s=120)), on_line=on_line)


async def test_output_is_capped_but_every_line_is_seen(sandbox: Sandbox, tmp_path: Path) -> None:
    script = "import sys\nfor i in range(2000): print(f'line-{i:05d}' + 'x' * 90)\nsys.stderr.write('e' * 50000)"
    seen: list[str] = []
    result = await sandbox.run(
        spec(tmp_path, script, limits=Limits(timeout_s=30, output_bytes=10_000)), on_line=seen.append
    )
    assert result.ok
    assert len(result.stdout) == 10_000 and result.stdout_truncated
    assert len(result.stderr) == 10_000 and result.stderr_truncated
    assert len(seen) == 2000 and seen[-1].startswith("line-01999")


async def test_stdin_is_closed_and_exit_codes_pass_through(sandbox: Sandbox, tmp_path: Path) -> None:
    script = "import sys; data = sys.stdin.read(); print(repr(data)); sys.stderr.write('bad'); sys.exit(7)"
    result = await sandbox.run(spec(tmp_path, script))
    assert (result.exit_code, result.stdout.strip(), result.stderr) == (7, "''", "bad")
    assert not result.ok and not result.timed_out and not result.oom_killed


async def test_relay_socket_in_a_read_only_bind_is_reachable(sandbox: Sandbox, tmp_path: Path) -> None:
    # The relays a CLI uses to reach runner-side MCP servers and the model gateway: a unix socket in a
    # read-only bind. The socket must be writable by the sandbox user (mode 0666), the directory need not.
    relay, workspace = tmp_path / "relay", tmp_path / "ws"
    relay.mkdir()
    workspace.mkdir()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"pong:" + await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer, path=str(relay / "gw.sock"))
    os.chmod(relay / "gw.sock", 0o666)
    script = """
import socket
s = socket.socket(socket.AF_UNIX)
s.connect('/run/relay/gw.sock')
s.sendall(b'ping\\n')
print(s.recv(100).decode().strip())
"""
    try:
        result = await sandbox.run(spec(workspace, script, binds=(Bind(source=str(relay), target="/run/relay"),)))
    finally:
        server.close()
    assert result.ok, result.stderr
    assert result.stdout.strip() == "pong:ping"


@pytest.mark.slow
async def test_docker_sweep_removes_leftovers_of_dead_runners(docker_sandbox: DockerSandbox) -> None:
    async with aiodocker.Docker(url=docker_sandbox.docker_host) as docker:
        config: dict[str, Any] = {
            "Image": docker_sandbox.image,
            "Cmd": ["sleep", "600"],
            "Labels": {LABEL_KEY: "old", OWNER_LABEL: f"{os.uname().nodename}:{dead_pid()}"},
            "HostConfig": {"NetworkMode": "none"},
        }
        leftover = await docker.containers.run(config=config, name="botburrow-sbx-leftover")
        assert await docker_sandbox.sweep() == 1
        with pytest.raises(aiodocker.DockerError):
            await leftover.show()


@pytest.mark.skipif(not cgroups.available(), reason="cgroup v1 controllers not writable here")
async def test_bwrap_sweep_removes_groups_of_dead_runners(bwrap_sandbox: BwrapSandbox) -> None:
    group = cgroups.Group("old")
    stale = f"{cgroups.PREFIX}{dead_pid()}-old-0000"
    group.dirs = {c: d.with_name(stale) for c, d in group.dirs.items()}
    group.create(Limits())
    # Through the runner's start-up sweep, which covers bwrap as well as docker. Cgroups are the host's:
    # a runner another test worker starts meanwhile sweeps too and may be the one that removes it.
    assert await sweep_once(SandboxRunner(bwrap_sandbox), activation_timeout_s=60) >= 0
    assert not any(d.exists() for d in group.dirs.values())


async def test_none_backend_warns_and_still_clears_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RUNNER_ONLY_SETTING", "runner-value")
    with caplog.at_level(logging.WARNING):
        sandbox = create("none")
    assert "UNSANDBOXED" in caplog.text
    result = await sandbox.run(SandboxSpec(argv=["env"], workspace=str(tmp_path), label="t", env={"A": "1"}))
    assert result.ok and "A=1" in result.stdout and "runner-value" not in result.stdout


async def test_stdio_process_gets_only_its_env_in_every_backend(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stdio` (MCP servers): a line in, its environment out; nothing of the runner's arrives."""
    monkeypatch.setenv("RUNNER_ONLY_SETTING", "runner-value")
    script = "import json, os, sys; sys.stdout.write(json.dumps([sys.stdin.readline(), dict(os.environ)]))"
    spec = SandboxSpec(argv=["python3", "-c", script], workspace=str(tmp_path), workdir=str(tmp_path),
                       label="stdio", env={"OWN": "own-value"})
    command = await sandbox.stdio(spec, limit_workspace=False)
    try:
        proc = await asyncio.create_subprocess_exec(command.command, *command.args, env=command.env, cwd=command.cwd,
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        stdout, _ = await asyncio.wait_for(proc.communicate(b"hello\n"), 60)
    finally:
        await command.cleanup()
    line, env = json.loads(stdout)
    assert line == "hello\n" and env["OWN"] == "own-value" and "RUNNER_ONLY_SETTING" not in env
    assert "own-value" not in " ".join(command.args)  # values travel in the environment or a file, never argv


def test_create_rejects_unknown_backends_and_docker_without_image() -> None:
    with pytest.raises(SandboxError):
        create("chroot")
    with pytest.raises(SandboxError):
        create("docker")
    assert isinstance(create("bwrap"), Sandbox)


@pytest.mark.slow
async def test_docker_setup_failures_are_sandbox_errors(docker_host: str, tmp_path: Path) -> None:
    sandbox = DockerSandbox(image="botburrow/no-such-image:0", docker_host=docker_host)
    try:
        with pytest.raises(SandboxError, match="could not create"):
            await sandbox.run(SandboxSpec(argv=["true"], workspace=str(tmp_path), label="t"))
    finally:
        await sandbox.close()


async def test_a_missing_workspace_is_a_sandbox_error(bwrap_sandbox: BwrapSandbox, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="workspace"):
        await bwrap_sandbox.run(SandboxSpec(argv=["true"], workspace=str(tmp_path / "gone"), label="t"))


@pytest.mark.slow
async def test_docker_refuses_binds_its_user_cannot_read(docker_sandbox: DockerSandbox, tmp_path: Path) -> None:
    # As root we hand the workspace to uid 1000: a private (0700) directory of ours would be unreadable
    # inside, and a missing source would be created by the engine. Both fail before any container exists.
    private, workspace = tmp_path / "private", tmp_path / "ws"
    private.mkdir(mode=0o700)
    workspace.mkdir()
    for source, reason in ((private, "cannot read the bind source"), (tmp_path / "gone", "does not exist")):
        with pytest.raises(SandboxError, match=reason):
            await docker_sandbox.run(spec(workspace, "print(1)", binds=(Bind(source=str(source), target="/opt/p"),)))
    assert not (tmp_path / "gone").exists()
