"""Everything on one machine: nats-server, the Hub emulator, the scripted LLM and every stage.

`LocalStack` is what `botburrow dev` runs, and what the end-to-end tests run: the stages are real
processes (`python -m botburrow <stage>`), configured only through their environment, exactly as in
a cluster. The Hub emulator and the scripted LLM run inside this process.

The embedded nats-server requires a user and password: each stage connects as its own user, whose
permissions cover only its subjects (streams.permissions), after `streams-apply` has made
the topology; `nats_url` carries the operator's credentials (what `botburrow dev` prints).

The agents come from `agents_source` (a directory or s3://, see `definitions`), loaded once at start to
say which loaded; with `model_url` the runners call that endpoint, with the model keys of this
environment, instead of the scripted LLM. Every process started is stopped with its process group
(`processes`); `kill` is the at-once form.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from botburrow.dev.definitions import EXAMPLES_DIR, SHOWN_AGENTS, Agents, StartError, load, source_of
from botburrow.dev.hubs import agents_with_keys, check_outside_hub, hub_name, write_webhook_secrets
from botburrow.dev.processes import die_with_parent, kill_group, reap, stop_group
from botburrow.doubles.hub_emulator import HubEmulator
from botburrow.doubles.scripted_llm import ScriptedLLM
from botburrow.runtime import natsserver
from botburrow.runtime.bus import Bus, servers_of
from botburrow.runtime.kvread import bucket_keys
from botburrow.secrets import without_credentials
from botburrow.settings import RunnerSettings
from streams import permissions
from streams.apply import ensure
from streams.topology import CONFIGS, RUNNER_ACK_WAIT_S

if TYPE_CHECKING:
    from botburrow.dev import DevOptions

__all__ = ["EXAMPLES_DIR", "LocalStack", "StartError", "await_configs", "free_port", "start_nats_on_port"]
STAGE_ORDER = ("configsync", "ingest", "scheduler", "metrics", "runner")
REPLICATED = ("runner", "scheduler")
READY_TIMEOUT_S = 60.0
SYSTEM_KEY = "dev-system-key-0001"


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before by this process. The kernel may give a just-released
    port to the next bind(0); two stages then got the same METRICS_PORT, one died on "Address already in
    use" and the other answered its readiness checks (the full soak saw it)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


# The environment a runner passes on with --model: the model keys (MODEL_KEY_ENVS) and the lists.
MODEL_SETTINGS = ("MODEL_KEY_ENVS", "MODEL_API_BASES")
# With an s3:// source, what configsync needs to read it.
S3_SETTINGS = ("R2_ENDPOINT", "R2_ACCESS_KEY", "R2_SECRET_KEY", "SECRETS_DIR")
# An s3:// MEMORY_STORE of your own is passed on with what reaching it takes; else memory is a directory.
MEMORY_SETTINGS = ("MEMORY_STORE", "MEMORY_S3_ENDPOINT", "MEMORY_EMBEDDINGS_URL", "MEMORY_EMBEDDINGS_MODEL",
                   "SECRETS_DIR")

@dataclass
class StageProcess:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log_path: Path


@dataclass
class LocalStack:
    work_dir: Path
    agents_source: Path | str = EXAMPLES_DIR  # a directory or s3://bucket/prefix
    # A real model endpoint for every model call (`dev --model`); None: the scripted LLM.
    model_url: str | None = None
    llm_strict: bool = False
    # (low, high) seconds of random latency on every model answer (soak tests); None: instant.
    llm_latency_s: tuple[float, float] | None = None
    runners: int = 1
    schedulers: int = 1
    poll_interval_s: float = 1.0
    # nats-servers: 0 or 1, one embedded server; 3, a cluster on loopback with R3 streams (`dev --cluster 3`).
    cluster: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    # How long each stage may take to report ready at start (a thousand agents on a small machine: more).
    ready_timeout_s: float = READY_TIMEOUT_S
    progress: Callable[[str], None] = lambda line: None
    nats_url: str = ""
    # The Hub (botburrow.dev.hubs): the emulator on `hub_profile`, or `hub_url` with `agent_keys_dir`.
    hub_profile: str = "botburrow"
    hub_url: str | None = None
    agent_keys_dir: Path | None = None
    pings: bool = False  # the emulator pings ingest's hook (HUB_WEBHOOKS) on each new notification
    hub_names: dict[str, str] = field(default_factory=dict)  # config name -> its name on the emulator
    hub: HubEmulator | None = None
    llm: ScriptedLLM | None = None
    stages: list[StageProcess] = field(default_factory=list)
    agent_keys: dict[str, str] = field(default_factory=dict)
    _nats: natsserver.NatsServer | None = None
    # Set when the stack runs its own nats-server: every user's password and the server's config file.
    _credentials: natsserver.Credentials | None = None
    nats_cluster: natsserver.Cluster | None = None
    agents: Agents | None = None  # what the source held at start

    @classmethod
    def in_temp_dir(cls, **kwargs: object) -> LocalStack:
        return cls(work_dir=Path(tempfile.mkdtemp(prefix="botburrow-dev-")), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def for_dev(cls, options: DevOptions, progress: Callable[[str], None],
                environ: Mapping[str, str] | None = None) -> LocalStack:
        """The stack `botburrow dev` runs; StartError (one line) on an option or setting that cannot work."""
        env = os.environ if environ is None else environ
        if env.get("NATS_URL"):
            servers_of(env["NATS_URL"])  # a malformed one is named now, not after the start-up
        model_url = _model_url(options.model, env) if options.model else None
        hub_url, keys_dir = check_outside_hub(options.hub, options.agent_keys, env) if options.hub else (None, None)
        return cls.in_temp_dir(runners=options.runners, cluster=options.cluster, progress=progress,
                               agents_source=source_of(options.agents, env), model_url=model_url,
                               hub_profile=options.hub_profile, hub_url=hub_url, agent_keys_dir=keys_dir)

    def agent_names(self) -> list[str]:
        """Every agent folder of a directory source (a broken one too); else the agents loaded."""
        if isinstance(self.agents_source, str) and self.agents_source.startswith("s3://"):
            return self.loaded_agents()
        agents = Path(self.agents_source) / "agents"
        return sorted(p.name for p in agents.iterdir() if (p / "config.yaml").is_file())

    def loaded_agents(self) -> list[str]:
        return self.agents.loaded() if self.agents else self.agent_names()

    def answering_agents(self) -> list[str]:
        """The loaded agents that can answer a mention (the others are named with why by `agents.report`)."""
        return self.agents.answering() if self.agents else self.agent_names()

    async def start_servers(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if os.environ.get("NATS_URL"):
            self.nats_url = os.environ["NATS_URL"]
            self.progress(f"nats-server: using NATS_URL={without_credentials(self.nats_url)}")
        else:
            await self._start_nats()
        self.agents = await load(str(self.agents_source), {**os.environ, **self.extra_env})
        for line in self.agents.report():
            self.progress(line)
        agents = sorted(set(self.agent_names()) | set(self.agents.loaded()))
        if self.hub_url:
            self._use_outside_hub(agents)
        else:
            await self._start_emulator(agents)
        if self.model_url:
            self.progress(f"model: every model call goes to {self.model_url}, with the keys of "
                          f"{', '.join(sorted(_model_keys(os.environ)))}")
            return
        self.llm = ScriptedLLM(strict=self.llm_strict, latency_s=self.llm_latency_s)
        await self.llm.start()
        self.progress(f"scripted LLM: {self.llm.url} ({'strict' if self.llm_strict else 'demo'} mode)")

    async def _start_emulator(self, agents: list[str]) -> None:
        self.hub = HubEmulator(system_key=SYSTEM_KEY, profile=self.hub_profile)
        await self.hub.start()
        for name in agents:
            self.hub_names[name] = hub_name(name, self.hub_profile)
            self.agent_keys[name] = self.hub.add_agent(self.hub_names[name], "native")
        self.progress(f"hub emulator ({self.hub_profile} profile): {self.hub.url} with {_shown(agents)}"
                      + ("; they post as " + _shown(list(self.hub_names.values()), count=False)
                         if self.hub_profile == "moltbook" else ""))

    def _use_outside_hub(self, agents: list[str]) -> None:
        assert self.agent_keys_dir is not None
        have, missing = agents_with_keys(self.agent_keys_dir, agents)
        self.progress(f"hub: {self.hub_url} (outside) with the keys in {self.agent_keys_dir} of {_shown(have)}"
                      + (f"; no key file for {_shown(missing)}: they cannot reach the Hub" if missing else ""))
        if not have:
            raise StartError(f"--agent-keys {self.agent_keys_dir}: no key file named after any agent "
                             f"({_shown(agents, count=False)})")

    def configure_pings(self, ingest: StageProcess) -> None:
        """The emulator's inbox pings to `ingest`'s hook, signed with the secrets its SECRETS_DIR holds."""
        assert self.hub is not None
        made = {name: (self.work_dir / "secrets" / f"webhook-{name}").read_text() for name in self.agent_keys}
        self.hub.configure_pings(f"http://127.0.0.1:{ingest.port}", made)
        self.progress(f"hub emulator: inbox pings to http://127.0.0.1:{ingest.port}/hooks/inbox/<agent>")

    async def _start_nats(self) -> None:
        """The embedded server, with a user per stage; the topology made as `streams-apply` before any stage."""
        self._credentials = natsserver.write_credentials(self.work_dir / "nats")
        if self.cluster > 1:
            self.nats_cluster = await asyncio.to_thread(natsserver.start_cluster, self.work_dir / "nats", self.cluster,
                                                        credentials=self._credentials, preexec_fn=die_with_parent)
            self.progress(f"nats-server: a cluster of {self.cluster} at {self.nats_cluster.url} with a user per "
                          f"stage (stores in {self.work_dir / 'nats'}/n*/store)")
        else:
            self._nats = await natsserver.start_async(self.work_dir / "nats", config_file=self._credentials.config_file,
                                                      preexec_fn=die_with_parent)
            self.progress(f"nats-server: started at {self._nats.url} with a user per stage "
                          f"(store in {self._nats.store_dir})")
        self.nats_url = self.stage_nats_url(permissions.OPERATOR)
        ack_wait_s = float(self.extra_env.get("RUNNER_ACK_WAIT_SECONDS", RUNNER_ACK_WAIT_S))
        bus = await Bus.connect(self.stage_nats_url(permissions.TOPOLOGY), name="botburrow-dev-apply")
        try:
            # A cluster answers JetStream calls once its meta group has a leader (a few seconds).
            await natsserver.jetstream_ready(bus.js, timeout_s=self.ready_timeout_s)
            await ensure(bus.js, runner_ack_wait_s=ack_wait_s, replicas=min(3, max(1, self.cluster)))
        finally:
            await bus.close()

    def stage_nats_url(self, stage: str | None) -> str:
        """The stage's own user on the embedded server; else (an external server) the one URL."""
        if self._credentials is None or stage not in permissions.USERS:
            return self.nats_url
        if self.nats_cluster is not None:
            return ",".join(self._credentials.url(url, stage) for url in self.nats_cluster.urls)
        if self._nats is None:
            return self.nats_url
        return self._credentials.url(self._nats.url, stage)

    def stage_env(self, port: int, stage: str | None = None) -> dict[str, str]:
        assert (self.hub is not None or self.hub_url) and (self.llm is not None or self.model_url)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", str(self.work_dir)),
            "NATS_URL": self.stage_nats_url(stage),
            **self._hub_env(stage),
            "AGENTS_SOURCE": str(self.agents_source),
            "MODEL_BASE_URL_OVERRIDE": self.model_url or (self.llm.url if self.llm else ""),
            "POLL_INTERVAL_SECONDS": str(self.poll_interval_s),
            "CONFIG_POLL_SECONDS": "2",
            "CONSUMPTION_FLUSH_SECONDS": "0.5",
            "SANDBOX_BACKEND": "none",
            # Agents whose definitions enable `memory` remember across activations in local mode too.
            "MEMORY_STORE": str(self.work_dir / "memory"),
            "METRICS_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
        passed = list(S3_SETTINGS) if str(self.agents_source).startswith("s3://") else []
        if os.environ.get("MEMORY_STORE"):
            passed += MEMORY_SETTINGS
        if self.model_url:
            passed += [*MODEL_SETTINGS, *_model_keys(os.environ)]
        env.update({name: os.environ[name] for name in passed if os.environ.get(name)})
        env.update(self.extra_env)
        return env

    def _hub_env(self, stage: str | None) -> dict[str, str]:
        """HUB_URL, the system key where there is one, the agents' keys, and ingest's hook with pings."""
        if self.hub_url:
            assert self.agent_keys_dir is not None
            key = {"HUB_API_KEY": os.environ["HUB_API_KEY"]} if os.environ.get("HUB_API_KEY") else {}
            return {"HUB_URL": self.hub_url, **key, "AGENT_KEYS_DIR": str(self.agent_keys_dir)}
        assert self.hub is not None
        env = {"HUB_URL": self.hub.url, "BOTBURROW_AGENT_KEYS": json.dumps(self.agent_keys)}
        if self.hub_profile != "moltbook":  # Moltbook has no system key (and no /system/* to use one on)
            env["HUB_API_KEY"] = SYSTEM_KEY
        if self.pings and stage == "ingest" and self.hub.profile.notifications:
            if not (self.work_dir / "secrets").is_dir():
                write_webhook_secrets(self.work_dir / "secrets", self.agent_keys)
            env.update(HUB_WEBHOOKS="true", SECRETS_DIR=str(self.work_dir / "secrets"))
        return env

    async def start_stage(self, name: str, index: int = 0) -> StageProcess:
        port = free_port()
        log_path = self.work_dir / f"{name}-{index}.log"
        with open(log_path, "ab") as log_file:  # noqa: ASYNC230 - opened once per stage, handed to the child
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "botburrow", name, env=self.stage_env(port, name),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, start_new_session=True,
                preexec_fn=die_with_parent)
        # Replicated stages get their index in the name, so each of several is told apart (faults, readiness).
        stage = StageProcess(f"{name}-{index}" if name in REPLICATED else name, process, port, log_path)
        self.stages.append(stage)
        return stage

    async def wait_ready(self, stage: StageProcess, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if stage.process.returncode is not None:
                    raise StartError(f"{stage.name} exited with {stage.process.returncode}"
                                     f"{_last_problem(stage.log_path)}; see {stage.log_path}")
                try:
                    if (await client.get(f"http://127.0.0.1:{stage.port}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise StartError(f"{stage.name} not ready after {timeout_s:.0f}s; see {stage.log_path}")

    async def start_stages(self) -> None:
        replicas = {"runner": self.runners, "scheduler": self.schedulers}
        names = [s for stage in STAGE_ORDER for s in [stage] * replicas.get(stage, 1)]
        counts: dict[str, int] = {}
        started = []
        for name in names:
            counts[name] = counts.get(name, 0) + 1
            started.append(await self.start_stage(name, counts[name] - 1))
        for i, stage in enumerate(started, 1):
            await self.wait_ready(stage, self.ready_timeout_s)
            self.progress(f"[{i}/{len(started)}] {stage.name} ready (pid {stage.process.pid}, "
                          f"http://127.0.0.1:{stage.port}/metrics, log {stage.log_path})")
        if self.pings and self.hub is not None and self.hub.profile.notifications:  # moltbook: nothing to ping
            self.configure_pings(next(s for s in started if s.name == "ingest"))

    async def start(self) -> None:
        await self.start_servers()
        await self.start_stages()

    async def stop_stage(self, stage: StageProcess, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        """`sig` to the stage, SIGKILL to its process group after `timeout_s` or once it has ended."""
        await stop_group(stage.process, sig, timeout_s)

    def kill(self) -> None:
        """Everything started, at once (SIGKILL to each process group): a second Ctrl-C."""
        for stage in self.stages:
            kill_group(stage.process.pid)
        pids = [self._nats.process.pid] if self._nats else []
        pids += [node.process.pid for node in self.nats_cluster.nodes if node.process] if self.nats_cluster else []
        for pid in pids:
            kill_group(pid)
        reap(self.work_dir)

    async def restart_nats(self, down_s: float = 0.0, sig: int = signal.SIGKILL) -> None:
        """Stop the embedded nats-server (SIGKILL by default, as a crash) and start it again on the same
        store and the same client port, so every stage reconnects to the URL it was given."""
        if self._nats is None:
            raise RuntimeError("restart_nats needs the embedded nats-server (NATS_URL was set)")
        old = self._nats
        old.process.send_signal(sig)
        await asyncio.to_thread(old.process.wait)
        await asyncio.sleep(down_s)
        port = int(old.url.rsplit(":", 1)[1])
        config_file = self._credentials.config_file if self._credentials else None
        self._nats = await asyncio.to_thread(start_nats_on_port, self.work_dir / "nats", old.store_dir, port,
                                             config_file)

    async def stop(self) -> None:
        await asyncio.gather(*(self.stop_stage(s) for s in self.stages))
        if self.llm:
            await self.llm.stop()
        if self.hub:
            await self.hub.stop()
        if self._nats:
            await asyncio.to_thread(self._nats.stop)
        if self.nats_cluster:
            await asyncio.to_thread(self.nats_cluster.stop)
        reap(self.work_dir)  # a server started while a stop interrupted its start: unknown to the above


def start_nats_on_port(work_dir: Path, store_dir: Path, port: int, config_file: Path | None = None,
                        timeout_s: float = 15.0) -> natsserver.NatsServer:
    """`natsserver.start` with a fixed client port (a restart must keep the URL the stages know) and the
    same users."""
    log = open(work_dir / "nats-server.log", "ab")
    process = subprocess.Popen(natsserver.command(store_dir, port=port, config_file=config_file),
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               preexec_fn=die_with_parent)
    log.close()
    url = f"nats://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with {process.returncode}; see {work_dir / 'nats-server.log'}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return natsserver.NatsServer(process, url, "", store_dir)
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"nats-server did not listen on {port} within {timeout_s}s")


async def await_configs(bus: Bus, names: list[str], timeout_s: float = 30.0) -> None:
    """Until configsync has published every agent of `names` to the `configs` bucket."""
    kv = await bus.kv(CONFIGS.name)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        keys = set(await bucket_keys(kv))
        if all(f"agent.{name}" in keys for name in names):
            return
        await asyncio.sleep(0.2)
    raise StartError("configsync did not publish the agents in time; see configsync.log")


def _shown(names: list[str], count: bool = True) -> str:
    """`3 agents: a, b, c` (the first SHOWN_AGENTS, then how many more); without `count`, the names only."""
    shown = ", ".join(names[:SHOWN_AGENTS]) + (f" and {len(names) - SHOWN_AGENTS} more"
                                               if len(names) > SHOWN_AGENTS else "")
    return f"{len(names)} agents: {shown}" if count else shown


def _model_keys(environ: Mapping[str, str]) -> list[str]:
    """The model key variables (MODEL_KEY_ENVS, else its default) set in `environ`."""
    names = environ.get("MODEL_KEY_ENVS") or ",".join(RunnerSettings.model_key_envs)
    return sorted(n.strip() for n in names.split(",") if n.strip() and environ.get(n.strip()))


def _model_url(url: str, environ: Mapping[str, str]) -> str:
    """`--model URL` checked: an http(s) base URL (a trailing /v1 dropped: the runner adds it for
    OpenAI-compatible calls), with a model key in the environment."""
    base = url.strip().rstrip("/").removesuffix("/v1")
    if not base.startswith(("http://", "https://")):
        raise StartError(f"--model {url}: not an http(s) URL such as https://api.anthropic.com")
    if not _model_keys(environ):
        raise StartError(f"--model {url}: no model key in the environment; set ANTHROPIC_API_KEY or "
                         "OPENAI_API_KEY (or the variables MODEL_KEY_ENVS names)")
    return base


def _last_problem(log_path: Path) -> str:
    """The last error a stage logged (one JSON line each), else its last line (a traceback's end, from a
    crash before logging was set up), as `: <what>`; empty if the log is."""
    try:
        lines = [line for line in log_path.read_text(errors="replace").splitlines()[-50:] if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        with contextlib.suppress(ValueError, AttributeError):
            event = json.loads(line)
            if event.get("level") in ("error", "critical"):
                return f": {event.get('event')}"
    return f": {lines[-1].strip()[:300]}" if lines and not lines[-1].startswith("{") else ""
