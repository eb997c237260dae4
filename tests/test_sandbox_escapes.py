"""The escape list (notes §7) against both real backends: every attempt must fail, the host stays clean."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.runner.sandbox import Limits, MiB, Sandbox, SandboxError, SandboxResult, SandboxSpec, quota
from services.runner.sandbox.bwrap import BwrapSandbox
from services.runner.sandbox.docker import DockerSandbox

# Until tests/conftest.py registers it.

REPO = str(Path(__file__).resolve().parents[1])
SECRET = "sk-planted-" + uuid.uuid4().hex


async def run(sandbox: Sandbox, workspace: Path, script: str, *args: str, **limits: float) -> SandboxResult:
    base: dict[str, Any] = {"timeout_s": 30.0, "memory_bytes": 128 * MiB, "pids": 32, "tmpfs_bytes": 16 * MiB,
                            "file_bytes": 8 * MiB}
    base.update(limits)
    spec = SandboxSpec(
        argv=["python3", "-c", script, *args], workspace=str(workspace), label="escape", limits=Limits(**base)
    )
    return await sandbox.run(spec)


def host_processes_with(marker: str) -> list[int]:
    """Pids on the host whose command line holds marker (a sandboxed process that outlived its sandbox)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


async def test_host_files_are_out_of_reach(sandbox: Sandbox, tmp_path: Path) -> None:
    workspace, secrets = tmp_path / "ws", tmp_path / "secrets"
    workspace.mkdir()
    secrets.mkdir()
    (secrets / "hub-token").write_text(SECRET)
    script = f"""
import os, sys
for path in (sys.argv[1], '/proc/{os.getpid()}/environ', '/proc/{os.getpid()}/root/etc/hostname',
             '/root/.bash_history', '{Path.home() / ".ssh"}'):
    try:
        print('READ', path, open(path).read()[:100])
    except OSError as e:
        print('denied', path, type(e).__name__)
"""
    result = await run(sandbox, workspace, script, str(secrets / "hub-token"))
    assert "READ" not in result.stdout and result.stdout.count("denied") == 5, result.stdout
    assert SECRET not in result.stdout + result.stderr


async def test_runner_environment_and_secret_files_are_not_inside(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_TOKEN", SECRET)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "secret.txt").write_text(SECRET)
    # Search every process's environment and command line, and every readable file outside /usr (the
    # host's own, under bwrap), /proc, /sys and /dev. The secret comes in two halves so argv cannot match.
    script = """
import os, sys
secret = (sys.argv[1] + sys.argv[2]).encode()
hits = [k for k, v in os.environ.items() if secret in v.encode()]
paths = [f'/proc/{p}/{f}' for p in os.listdir('/proc') if p.isdigit() for f in ('environ', 'cmdline')]
for top in os.listdir('/'):
    if top not in ('usr', 'sys', 'proc', 'dev') and not os.path.islink('/' + top):
        for root, dirs, files in os.walk('/' + top):
            paths += [os.path.join(root, n) for n in files if not os.path.islink(os.path.join(root, n))]
for path in paths:
    try:
        with open(path, 'rb') as f:
            if secret in f.read(1 << 20):
                hits.append(path)
    except OSError:
        pass
print('HITS', hits)
"""
    result = await run(sandbox, workspace, script, SECRET[:12], SECRET[12:])
    assert result.ok, result.stderr
    assert "HITS []" in result.stdout, result.stdout


@pytest.fixture
async def host_listener() -> AsyncIterator[tuple[int, list[str]]]:
    """A TCP server on all host addresses; records every connection it accepts."""
    accepted: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(str(writer.get_extra_info("peername")))
        writer.close()

    server = await asyncio.start_server(handle, host="0.0.0.0", port=0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, accepted
    finally:
        server.close()
        await server.wait_closed()


def host_addresses() -> list[str]:
    addresses = {"127.0.0.1"}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
            addresses.add(probe.getsockname()[0])
        except OSError:
            pass
    return sorted(addresses)


async def test_network_is_unreachable(sandbox: Sandbox, tmp_path: Path, host_listener: tuple[int, list[str]]) -> None:
    port, accepted = host_listener
    script = """
import json, os, socket, sys
out = {'interfaces': sorted(os.listdir('/sys/class/net')) if os.path.isdir('/sys/class/net') else None}
with open('/proc/net/dev') as f:
    out['proc_net'] = sorted(line.split(':')[0].strip() for line in f.readlines()[2:])
for host in sys.argv[2:] + ['deb.debian.org']:
    try:
        socket.create_connection((host, int(sys.argv[1])), timeout=3).close()
        out[host] = 'CONNECTED'
    except OSError as e:
        out[host] = type(e).__name__
print(json.dumps(out))
"""
    result = await run(sandbox, tmp_path, script, str(port), *host_addresses())
    assert result.ok, result.stderr
    out = json.loads(result.stdout)
    assert out["proc_net"] == ["lo"]
    assert "CONNECTED" not in out.values(), out
    assert accepted == []


@pytest.mark.slow
async def test_fork_bomb_is_contained(sandbox: Sandbox, tmp_path: Path) -> None:
    marker = "forkbomb-" + uuid.uuid4().hex
    counter = """
import os, sys, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print('forks', n, e.errno)
"""
    result = await run(sandbox, tmp_path, counter, marker, pids=32)
    forks = int(result.stdout.split()[1])
    assert forks < 32, result.stdout
    # A real bomb: it must be killed at the time limit and leave nothing behind on the host.
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = await run(sandbox, tmp_path, bomb, marker, pids=32, timeout_s=2)
    assert result.timed_out
    assert host_processes_with(marker) == []


async def test_disk_cannot_be_filled(sandbox: Sandbox, tmp_path: Path) -> None:
    # Each location is filled file by file until the first error: the tmpfs must run out of space, one
    # workspace file must stop at RLIMIT_FSIZE, the read-only root and /var/tmp must refuse.
    script = """
import errno, os, sys
for where in ('/tmp', '/workspace', '/', '/var/tmp', '/dev/shm'):
    written, outcome = 0, 'FILLED'
    try:
        for i in range(64):
            with open(os.path.join(where, f'fill{i}'), 'wb') as f:
                for _ in range(4 if where != '/workspace' else 64):
                    f.write(b'x' * (1 << 20))
                    f.flush()
                    written += 1 << 20
    except OSError as e:
        outcome = errno.errorcode.get(e.errno, str(e.errno))
    print(where, written, outcome, flush=True)
"""
    result = await run(sandbox, tmp_path, script, tmpfs_bytes=16 * MiB, file_bytes=8 * MiB)
    assert result.ok, result.stderr
    outcomes = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()}
    assert "FILLED" not in result.stdout, result.stdout
    assert int(outcomes["/tmp"][0]) <= 16 * MiB and outcomes["/tmp"][1] == "ENOSPC"
    assert int(outcomes["/workspace"][0]) <= 8 * MiB and outcomes["/workspace"][1] == "EFBIG"
    assert outcomes["/"] == ["0", "EROFS"] or outcomes["/"][1] == "EACCES", outcomes
    assert (tmp_path / "fill0").stat().st_size <= 8 * MiB


async def test_memory_limit_kills_and_is_reported(sandbox: Sandbox, tmp_path: Path) -> None:
    script = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n"
    result = await run(sandbox, tmp_path, script, memory_bytes=64 * MiB)
    assert result.oom_killed and result.exit_code == 137 and not result.timed_out


async def test_time_limit_kills_everything_it_started(sandbox: Sandbox, tmp_path: Path) -> None:
    marker = "outlive-" + uuid.uuid4().hex
    # A grandchild in its own session that ignores SIGTERM/SIGHUP tries to outlive the sandbox.
    script = """
import os, signal, sys, time
if os.fork() == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', sys.argv[1]])
    os._exit(0)
print('started', flush=True)
time.sleep(600)
"""
    result = await run(sandbox, tmp_path, script, marker, timeout_s=1)
    assert result.timed_out and result.exit_code == 137
    assert result.stdout == "started\n"
    assert host_processes_with(marker) == []


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed: apt-get install bubblewrap")
async def test_bwrap_without_cgroups_still_bounds_memory_files_and_time(tmp_path: Path) -> None:
    """The fallback of an unprivileged runner pod: prlimit stands in for the memory group."""
    sandbox = BwrapSandbox(use_cgroups=False)
    hog = await run(sandbox, tmp_path, "b = bytearray(512 << 20)", memory_bytes=256 * MiB)
    assert hog.exit_code != 0 and "MemoryError" in hog.stderr
    big = await run(sandbox, tmp_path, "open('/workspace/big', 'wb').write(b'x' * (9 << 20))", file_bytes=8 * MiB)
    assert big.exit_code != 0 and (tmp_path / "big").stat().st_size <= 8 * MiB
    slow = await run(sandbox, tmp_path, "import time; time.sleep(600)", timeout_s=1)
    assert slow.timed_out


UNPRIVILEGED_RUN = """
import asyncio, json, sys
from services.runner.sandbox import Limits, SandboxSpec, create
bomb = "import os, time\\nn = 0\\ntry:\\n    while True:\\n        if os.fork() == 0:\\n            time.sleep(5)\\n"
bomb += "            os._exit(0)\\n        n += 1\\nexcept OSError:\\n    print(n)\\n"
async def main():
    sandbox = create("bwrap")
    limits = Limits(pids=32, memory_bytes=128 << 20, timeout_s=20)
    def spec(script):
        return SandboxSpec(argv=["python3", "-c", script], workspace=sys.argv[1], label="u", limits=limits)
    forks = await sandbox.run(spec(bomb))
    hog = await sandbox.run(spec("bytearray(400 << 20)"))
    print(json.dumps({"forks": forks.stdout.strip(), "hog": hog.stderr}))
asyncio.run(main())
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed: apt-get install bubblewrap")
async def test_unprivileged_runner_still_bounds_forks_and_memory() -> None:
    """A runner pod that is not root has no cgroups to write: run one as uid 1000 and try."""
    workspace = await asyncio.to_thread(tempfile.mkdtemp, prefix="sbx-unpriv-")
    try:
        await asyncio.to_thread(os.chmod, workspace, 0o777)
        proc = await asyncio.create_subprocess_exec(
            "setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups",
            sys.executable, "-c", UNPRIVILEGED_RUN, workspace,
            cwd=REPO, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        stdout, stderr = await proc.communicate()
    finally:
        await asyncio.to_thread(shutil.rmtree, workspace, True)
    assert proc.returncode == 0, stderr.decode()
    out = json.loads(stdout)
    assert 0 < int(out["forks"]) < 32
    assert "MemoryError" in out["hog"]


@pytest.fixture(params=["bwrap", pytest.param("docker", marks=pytest.mark.slow)])
def new_small_workspace_sandbox(request: pytest.FixtureRequest) -> Sandbox:
    """Each backend with a 24 MiB workspace limit (SANDBOX_WORKSPACE_MB). Sync: the docker fixtures are
    session-wide async ones, which cannot be asked for inside a running loop."""
    if not quota.supported():
        pytest.skip("the workspace limit needs root, loop devices and mkfs.ext4")
    if request.param == "bwrap":
        if shutil.which("bwrap") is None:
            pytest.skip("bwrap not installed: apt-get install bubblewrap")
        return BwrapSandbox(workspace_bytes=24 * MiB)
    return DockerSandbox(image=request.getfixturevalue("sandbox_image"),
                         docker_host=request.getfixturevalue("docker_host"), workspace_bytes=24 * MiB)


@pytest.fixture
async def small_workspace_sandbox(new_small_workspace_sandbox: Sandbox) -> AsyncIterator[Sandbox]:
    try:
        yield new_small_workspace_sandbox
    finally:
        await new_small_workspace_sandbox.close()


async def test_workspace_total_size_is_bounded_and_reported(small_workspace_sandbox: Sandbox, tmp_path: Path) -> None:
    # Many files, each under the per-file limit: only the total size limit can stop them.
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "kept.txt").write_text("there before the limit")
    script = """
import errno, os
written, outcome = 0, 'FILLED'
try:
    for i in range(16):
        with open(f'/workspace/fill{i}', 'wb') as f:
            for _ in range(4):
                f.write(b'x' * (1 << 20))
                f.flush()
                written += 1 << 20
except OSError as e:
    outcome = errno.errorcode.get(e.errno, str(e.errno))
print(written, outcome, open('/workspace/kept.txt').read(), flush=True)
raise SystemExit(1 if outcome != 'FILLED' else 0)
"""
    result = await run(small_workspace_sandbox, workspace, script, file_bytes=8 * MiB)
    written, outcome = result.stdout.split()[:2]
    assert outcome == "ENOSPC" and int(written) <= 24 * MiB, result.stdout
    assert "there before the limit" in result.stdout
    assert result.workspace_full and not result.ok
    assert "workspace size limit of 24 MiB was reached" in result.stderr
    used = sum(p.stat().st_size for p in workspace.iterdir())
    assert used <= 24 * MiB
    # The next run in the same workspace still sees the limit (and what the first one wrote).
    again = await run(small_workspace_sandbox, workspace, script, file_bytes=8 * MiB)
    assert again.stdout.split()[1] == "ENOSPC" and again.workspace_full
    # Closing the backend gives the space back and leaves the workspace a plain (empty) directory.
    await small_workspace_sandbox.close()
    assert not workspace.is_mount() and list(workspace.iterdir()) == []


async def test_a_workspace_already_over_the_limit_is_refused(small_workspace_sandbox: Sandbox, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    for i in range(4):
        (workspace / f"big{i}").write_bytes(b"x" * (8 * MiB))
    with pytest.raises(SandboxError, match="24 MiB"):
        await run(small_workspace_sandbox, workspace, "print('never')")
    assert not workspace.is_mount() and len(list(workspace.iterdir())) == 4


async def test_a_removed_workspace_gives_its_space_back_at_the_second_sweep(
        small_workspace_sandbox: Sandbox, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    result = await run(small_workspace_sandbox, workspace, "open('/workspace/f', 'w').write('x')")
    assert result.ok and workspace.is_mount()
    await small_workspace_sandbox.sweep()
    assert workspace.is_mount()  # not empty: kept
    # The owner removes the workspace: rmtree empties it, its last rmdir fails on the mount point.
    shutil.rmtree(workspace, ignore_errors=True)
    await small_workspace_sandbox.sweep()
    assert workspace.is_mount()  # empty at one sweep: maybe between two runs
    assert await small_workspace_sandbox.sweep() >= 1 and not workspace.is_mount()


HOLD_A_WORKSPACE = """
import asyncio, os, signal, sys
from services.runner.sandbox.quota import WorkspaceQuotas
async def main():
    quotas = WorkspaceQuotas(16 << 20)
    async with quotas.hold(sys.argv[1]):
        print('mounted', flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # a crashed runner: no atexit, no close
asyncio.run(main())
"""


@pytest.mark.skipif(not quota.supported(), reason="the workspace limit needs root, loop devices and mkfs.ext4")
async def test_a_dead_runners_workspace_mounts_are_swept(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLD_A_WORKSPACE, str(workspace), cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await proc.communicate()
    assert stdout == b"mounted\n" and proc.returncode == -9, stderr.decode()
    assert workspace.is_mount()
    # Mounts are the host's: a runner another test worker starts meanwhile sweeps too and may be first.
    await asyncio.to_thread(quota.sweep_dead)
    assert not workspace.is_mount()
