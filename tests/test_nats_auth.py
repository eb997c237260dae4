"""NATS is authenticated (issue 14): a user per stage, permissions limited to its own subjects.

A real nats-server runs with the config `botburrow dev` writes (natsserver.write_credentials, users
and allow lists from streams.permissions). Each stage's user does its real operations
(`ensure` at start, its publishes, its durables, its buckets); what belongs to another stage, the
JetStream admin API and unauthenticated connections are refused by the server.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import nats.errors
import pytest
from nats.aio.client import Client

from botburrow.runtime import natsserver
from botburrow.runtime.kvread import bucket_keys
from botburrow.runtime.service import StageContext, run_stage
from botburrow.settings import STAGES
from services.scheduler.partitions import partition_of
from streams import permissions, subjects
from streams.apply import ensure
from streams.topology import BUCKETS, CONSUMERS, SCHEDULER_PARTITIONS, STREAMS, ConsumerSpec
from tests.fixtures.wait import until

WAIT_S = 10.0
Server = tuple[natsserver.NatsServer, natsserver.Credentials]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("nats-auth")
    credentials = natsserver.write_credentials(work)
    server = natsserver.start(work, config_file=credentials.config_file)
    try:
        yield server, credentials
    finally:
        server.stop()


class Conn:
    """A connection as one user, collecting the errors the server reports (permission violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc = Client()

    async def open(self, url: str) -> Conn:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        await self.nc.connect(url, error_cb=on_error, allow_reconnect=False, connect_timeout=2,
                              inbox_prefix=permissions.inbox_prefix(url))  # as Bus.connect does
        return self

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]

    async def refused(self, what: str) -> None:
        """Wait until the server has refused `what` (its subject is in the violation)."""
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while not any(f'"{what.lower()}"' in e.lower() for e in self.violations()):  # nats-py lowercases it
            assert asyncio.get_running_loop().time() < deadline, f"{what} was not refused: {self.errors}"
            await self.nc.flush()


@pytest.fixture
async def connect(auth_server: Server) -> AsyncIterator:
    server, credentials = auth_server
    opened: list[Conn] = []

    async def as_user(user: str) -> Conn:
        conn = await Conn().open(credentials.url(server.url, user))
        opened.append(conn)
        return conn

    yield as_user
    for conn in opened:
        await conn.nc.close()


@pytest.fixture(scope="module")
async def topology(auth_server: Server) -> None:
    """Made once, as `botburrow dev` and the Kubernetes Job make it: by the streams-apply user."""
    server, credentials = auth_server
    conn = await Conn().open(credentials.url(server.url, permissions.TOPOLOGY))
    try:
        lines = await ensure(conn.nc.jetstream(timeout=5))
        assert all(line.endswith("created") for line in lines), lines
        # `botburrow streams apply` (update=True) changes existing objects: still within its rights.
        lines = await ensure(conn.nc.jetstream(timeout=5), update=True)
        assert all(line.endswith("unchanged") for line in lines), lines
        assert conn.violations() == []
    finally:
        await conn.nc.close()


def _agent_in_partition(partition: int) -> str:
    return next(name for i in range(10_000) if partition_of(name := f"auth-{i}") == partition)


def landing_subject(spec: ConsumerSpec) -> str:
    """A subject whose message reaches this durable (SCHEDULER's through its sourced notifications)."""
    if spec.stream == "SCHEDULER":
        return subjects.notification(_agent_in_partition(int(spec.durable.rsplit("p", 1)[1])))
    return spec.filter_subjects[0].replace("*", "auth-test")


async def _publishes(conn: Conn, stage: str) -> None:
    js = conn.nc.jetstream(timeout=5)
    for spec in STREAMS:
        if permissions.STREAM_WRITERS.get(spec.name) == stage:
            for subject in spec.subjects:
                ack = await js.publish(subject.replace("*", "auth-test"), b"{}")
                assert ack.stream == spec.name
    assert (await js.publish(subjects.dlq(stage), b"{}")).stream == "DLQ"


async def _consumes(conn: Conn, operator: Conn, stage: str) -> None:
    js, admin = conn.nc.jetstream(timeout=5), operator.nc.jetstream(timeout=5)
    for spec in CONSUMERS:
        if permissions.consumer_stage(spec.durable) != stage:
            continue
        await admin.publish(landing_subject(spec), b"{}")
        sub = await js.pull_subscribe_bind(spec.durable, spec.stream)
        messages = await sub.fetch(100, timeout=WAIT_S)
        for msg in messages:
            await msg.in_progress()
            await msg.ack_sync()  # waits for the server: a refused ack would time out here
        await sub.unsubscribe()
        info = await admin.consumer_info(spec.stream, spec.durable)
        assert messages and info.num_ack_pending == 0, (spec.durable, info)


async def _buckets(conn: Conn, operator: Conn, stage: str) -> None:
    js, admin = conn.nc.jetstream(timeout=5), operator.nc.jetstream(timeout=5)
    for bucket in BUCKETS:
        kv = await js.key_value(bucket.name)
        if bucket.writer == stage:
            revision = await kv.put("auth-test", b"1")
            assert (await kv.get("auth-test")).value == b"1"
            await kv.update("auth-test", b"2", last=revision)
            assert "auth-test" in await bucket_keys(kv)  # a watch: an ordered consumer on KV_<bucket>
            await kv.delete("auth-test")
        elif stage in permissions.BUCKET_READERS.get(bucket.name, ()):
            await (await admin.key_value(bucket.name)).put("auth-read", b"x")
            assert (await kv.get("auth-read")).value == b"x"
            assert "auth-read" in await bucket_keys(kv)  # a watch, as a reader follows the bucket
    for stream, readers in permissions.STREAM_READERS.items():
        if stage in readers:
            info = await admin.stream_info(stream)
            # The runner's lookup of its last event on a subject (runlog), and gets by sequence.
            last = await js.get_msg(stream, subject="agents.run.auth-test.auth-test.auth-test", direct=True)
            assert last.seq is not None and last.seq > 0
            assert (await js.get_msg(stream, seq=info.state.last_seq, direct=True)).seq == info.state.last_seq
            assert (await js.get_msg(stream, seq=info.state.last_seq)).seq == info.state.last_seq


@pytest.mark.parametrize("stage", STAGES)
async def test_each_stage_user_does_its_own_work(stage: str, topology: None, connect) -> None:
    conn, operator = await connect(stage), await connect(permissions.OPERATOR)
    lines = await ensure(conn.nc.jetstream(timeout=5))  # what every stage runs at start
    assert all(line.endswith("exists") for line in lines), lines
    await _publishes(conn, stage)
    await _consumes(conn, operator, stage)
    await _buckets(conn, operator, stage)
    await conn.nc.flush()
    assert conn.violations() == []


# (user, "pub" or "sub", subject): each is another stage's or the operator's, and the server refuses it.
REFUSED = [
    ("runner", "pub", "agents.ingest.notification.x"),  # a forged notification
    ("runner", "pub", "$JS.API.STREAM.PURGE.RUNS"),  # the attack dlq redrive made possible
    ("runner", "pub", "$JS.API.STREAM.DELETE.CONFIG"),
    ("runner", "pub", "agents.dlq.scheduler"),  # another stage's dead letter, which redrive would trust
    ("runner", "pub", "$JS.API.CONSUMER.CREATE.RUNS"),  # with a `name`, it rewrites the `metrics` durable
    ("runner", "pub", "$JS.API.STREAM.CREATE.EVIL"),
    ("ingest", "pub", "agents.run.a.b.completed"),  # a forged run ending
    ("ingest", "pub", "agents.sched.activation.high.a"),  # an activation without the scheduler
    ("scheduler", "pub", "$KV.configs.agent.a"),  # a forged agent definition
    ("metrics", "pub", "$JS.API.CONSUMER.MSG.NEXT.ACTIVATIONS.runner-high"),  # taking the runners' work
    ("configsync", "pub", "$JS.ACK.ACTIVATIONS.runner-high.1.1.1.1.0"),
    ("configsync", "pub", "$JS.API.CONSUMER.CREATE.ACTIVATIONS"),
    ("streams-apply", "pub", "$JS.API.STREAM.PURGE.RUNS"),
    ("streams-apply", "pub", "agents.ingest.notification.x"),
    ("runner", "sub", "agents.>"),  # reading every event without a consumer
    ("ingest", "sub", "_INBOX.>"),  # reading what others fetch and are answered
    ("ingest", "sub", "_INBOX_runner.>"),  # the runner's activation requests, as its fetches deliver them
    ("ingest", "sub", "$KV.>"),
]


@pytest.mark.parametrize(("user", "kind", "subject"), REFUSED)
async def test_other_stages_subjects_and_the_admin_api_are_refused(
        user: str, kind: str, subject: str, topology: None, connect) -> None:
    conn = await connect(user)
    if kind == "pub":
        await conn.nc.publish(subject, b"{}")
    else:
        await conn.nc.subscribe(subject)
    await conn.refused(subject)


async def test_a_refused_purge_leaves_the_stream_and_a_refused_consumer_rewrite_the_durable(
        topology: None, connect) -> None:
    runner, operator = await connect("runner"), await connect(permissions.OPERATOR)
    admin = operator.nc.jetstream(timeout=5)
    await admin.publish("agents.run.purge-test.a1.completed", b"{}")
    before = (await admin.stream_info("RUNS")).state.messages
    with pytest.raises(nats.errors.TimeoutError):  # refused: no answer ever comes
        await runner.nc.request("$JS.API.STREAM.PURGE.RUNS", b"", timeout=1)
    config = {"name": "metrics", "ack_policy": "explicit", "deliver_policy": "all", "max_ack_pending": 1,
              "filter_subjects": ["agents.run.*.*.started"], "ack_wait": 30_000_000_000, "max_deliver": 6}
    with pytest.raises(nats.errors.TimeoutError):
        await runner.nc.request("$JS.API.CONSUMER.CREATE.RUNS",
                                json.dumps({"stream_name": "RUNS", "config": config}).encode(), timeout=1)
    assert (await admin.stream_info("RUNS")).state.messages == before > 0
    metrics = await admin.consumer_info("RUNS", "metrics")
    assert metrics.config.filter_subjects == ["agents.run.*.*.completed", "agents.run.*.*.failed"]


@pytest.mark.parametrize("password", [None, "wrong"])
async def test_a_connection_without_the_right_password_is_refused(auth_server: Server, password: str | None) -> None:
    server, credentials = auth_server
    url = server.url if password is None else credentials.url(server.url, "runner").replace(
        credentials.passwords["runner"], password)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, allow_reconnect=False, connect_timeout=2)


def test_the_config_file_is_private_and_holds_every_user(auth_server: Server) -> None:
    _, credentials = auth_server
    assert credentials.config_file.stat().st_mode & 0o777 == 0o600
    config = json.loads(credentials.config_file.read_text())
    users = config["accounts"][permissions.ACCOUNT]["users"]
    assert [u["user"] for u in users] == list(permissions.USERS)
    assert len(set(credentials.passwords.values())) == len(permissions.USERS)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{20,}", p) for p in credentials.passwords.values())  # URL-safe


async def test_a_stage_cannot_make_a_missing_topology_and_waits_for_streams_apply(tmp_path: Path) -> None:
    credentials = natsserver.write_credentials(tmp_path)
    server = await natsserver.start_async(tmp_path, config_file=credentials.config_file)
    try:
        runner = await Conn().open(credentials.url(server.url, "runner"))
        with pytest.raises(nats.errors.TimeoutError):
            await ensure(runner.nc.jetstream(timeout=0.5))
        await runner.refused("$JS.API.STREAM.CREATE.NOTIFICATIONS")
        apply = await Conn().open(credentials.url(server.url, permissions.TOPOLOGY))
        await ensure(apply.nc.jetstream(timeout=5))
        assert all(line.endswith("exists") for line in await ensure(runner.nc.jetstream(timeout=5)))
        await apply.nc.close()
        await runner.nc.close()
    finally:
        await asyncio.to_thread(server.stop)


def test_every_topology_object_has_its_stages() -> None:
    assert permissions.check() == []
    # Each scheduler partition, each runner priority and the metrics durable is read by exactly its stage.
    readers = {spec.durable: permissions.consumer_stage(spec.durable) for spec in CONSUMERS}
    assert sorted(d for d, s in readers.items() if s == "scheduler") == [
        f"scheduler-p{p:02d}" for p in range(SCHEDULER_PARTITIONS)]
    assert readers["metrics"] == "metrics"


# --- Health and metrics bind METRICS_HOST (loopback by default; the pod IP in Kubernetes) ---

def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.200", 9))  # no packet is sent: this only picks the outgoing address
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def _reachable(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except OSError:
        return False
    writer.close()
    return True


@pytest.mark.parametrize("bind", ["default", "other"])
async def test_a_stage_serves_health_only_on_metrics_host(bind: str, auth_server: Server, topology: None) -> None:
    other = _non_loopback_address()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    server, credentials = auth_server
    env = {"NATS_URL": credentials.url(server.url, "ingest"), "HUB_URL": "http://127.0.0.1:9", "METRICS_PORT": "0"}
    if bind == "other":
        env["METRICS_HOST"] = other  # what the pod IP is in Kubernetes
    listening, refused = ("127.0.0.1", other) if bind == "default" else (other, "127.0.0.1")

    async def body(ctx: StageContext) -> None:
        await ctx.stop.wait()

    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    stage = asyncio.create_task(run_stage("ingest", body, environ=env, stop=stop, on_ready_port=port.set_result))
    try:
        bound = await asyncio.wait_for(port, WAIT_S)
        async with httpx.AsyncClient() as http:
            async def ready() -> bool:  # as its NATS user
                return (await http.get(f"http://{listening}:{bound}/readyz")).status_code == 200

            await until(ready, WAIT_S, "the stage ready")
        assert not await _reachable(refused, bound)
    finally:
        stop.set()
        await asyncio.wait_for(stage, WAIT_S)
