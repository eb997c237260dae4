"""Start a private Docker engine (Debian docker.io's dockerd) for tests and CI; stop it by PID.

    python -m services.runner.sandbox.dockerd run [--cache-dir .cache/sandbox] -- COMMAND...

starts one, makes sure it has the sandbox base image (see images.py), runs COMMAND with DOCKER_HOST and
SANDBOX_IMAGE set, and stops the engine. Its configuration follows the notes (§5): overlay2, no bridge
(a default bridge would route into a private address range), no iptables, and its own data-root,
exec-root, pidfile and unix socket, so it never touches a system engine. Needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class DockerdError(RuntimeError):
    pass


@dataclass
class Dockerd:
    process: subprocess.Popen[bytes]
    host: str
    work_dir: Path
    exec_root: Path

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM by PID (its containerd exits with it), SIGKILL after timeout_s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.exec_root, ignore_errors=True)


def _ping(socket_path: Path) -> bool:
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(256)
    except OSError:
        return False


def start(work_dir: Path, *, timeout_s: float = 60.0) -> Dockerd:
    """Start dockerd with its state in work_dir; block until it answers /_ping (about 0.3 s)."""
    binary = shutil.which("dockerd")
    if binary is None:
        raise DockerdError("dockerd not found: apt-get install --no-install-recommends docker.io")
    work_dir.mkdir(parents=True, exist_ok=True)
    # exec-root holds containerd's sockets: keep its path short (unix socket paths max out at 108 bytes).
    exec_root = Path(tempfile.mkdtemp(prefix="bbdx-", dir="/tmp"))
    socket_path = exec_root / "docker.sock"
    config = {
        "storage-driver": "overlay2", "iptables": False, "ip6tables": False, "bridge": "none",
        "data-root": str(work_dir / "data"), "exec-root": str(exec_root), "pidfile": str(exec_root / "dockerd.pid"),
        "hosts": [f"unix://{socket_path}"],
    }  # fmt: skip
    (work_dir / "daemon.json").write_text(json.dumps(config))
    log = open(work_dir / "dockerd.log", "ab")
    process = subprocess.Popen(
        [binary, "--config-file", str(work_dir / "daemon.json")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    daemon = Dockerd(process, f"unix://{socket_path}", work_dir, exec_root)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            daemon.stop()
            tail = (work_dir / "dockerd.log").read_text(errors="replace")[-1500:]
            raise DockerdError(f"dockerd exited with {process.returncode}:\n{tail}")
        if _ping(socket_path):
            return daemon
        time.sleep(0.05)
    daemon.stop()
    raise DockerdError(f"dockerd did not answer within {timeout_s}s; see {work_dir / 'dockerd.log'}")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import asyncio

    from services.runner.sandbox import images

    parser = argparse.ArgumentParser(prog="python -m services.runner.sandbox.dockerd")
    parser.add_argument("action", choices=["run"])
    parser.add_argument("--cache-dir", type=Path, default=images.DEFAULT_CACHE_DIR)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    with tempfile.TemporaryDirectory(prefix="dockerd-") as tmp:
        daemon = start(Path(tmp))
        try:
            image = asyncio.run(images.ensure_base_image(daemon.host, args.cache_dir))
            env = dict(os.environ, DOCKER_HOST=daemon.host, SANDBOX_IMAGE=image)
            return subprocess.run(command, env=env).returncode
        finally:
            daemon.stop()


if __name__ == "__main__":
    sys.exit(main())
