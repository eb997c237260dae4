"""`botburrow doctor`: the JetStream cluster as the stages see it (issue 20).

One line per stream, bucket (`KV_<name>`) and topology consumer: its replicas, its leader, and the peers
that are lagging or offline. Exit 0 when every one has a leader and all its replicas current, 1 when
one does not (an election going on, a node down, a peer still catching up), 2 when JetStream does not
answer at all. Read-only: it uses only the `$JS.API.*.INFO` calls, which the operator user may make.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
from nats.js import JetStreamContext
from nats.js.api import ClusterInfo
from nats.js.errors import NotFoundError

from botburrow.runtime.bus import Bus
from botburrow.secrets import without_credentials
from botburrow.settings import CliSettings, load
from streams.topology import BUCKETS, CONSUMERS, STREAMS

KV_PREFIX = "KV_"
INFO_TIMEOUT_S = 2.0


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One stream, bucket or consumer: what `doctor` prints."""

    kind: str  # stream | bucket | consumer
    name: str
    replicas: int
    leader: str | None
    current: int  # the leader plus the peers that are current
    lagging: tuple[str, ...] = ()
    offline: tuple[str, ...] = ()
    error: str = ""  # its info did not come (its leader just died, an election): what was raised

    @property
    def healthy(self) -> bool:
        return not self.error and self.leader is not None and self.current == self.replicas and not self.offline


def _row(kind: str, name: str, replicas: int, cluster: ClusterInfo | None) -> Row:
    if cluster is None:  # a single server: no cluster info, the server itself leads
        return Row(kind=kind, name=name, replicas=replicas, leader="(single server)", current=replicas)
    peers = cluster.replicas or []
    lagging = tuple(f"{p.name}{f' ({p.lag} behind)' if p.lag else ''}" for p in peers
                    if not p.current and not p.offline)
    offline = tuple(p.name or "?" for p in peers if p.offline)
    current = (1 if cluster.leader else 0) + sum(1 for p in peers if p.current and not p.offline)
    return Row(kind=kind, name=name, replicas=replicas, leader=cluster.leader or None, current=current,
               lagging=lagging, offline=offline)


async def _stream_names(js: JetStreamContext) -> list[str]:
    """The topology's streams and buckets, and any other stream of the account (when the list comes: the
    meta leader gathers it from every stream's leader, and one just killed holds it up)."""
    names = [spec.name for spec in STREAMS] + [bucket.stream for bucket in BUCKETS]
    try:
        listed = {info.config.name or "" for info in await asyncio.wait_for(js.streams_info(), INFO_TIMEOUT_S)}
    except Exception:
        return names
    return names + sorted(listed - set(names) - {""})


async def cluster_report(js: JetStreamContext) -> list[Row]:
    """Every stream and bucket, then the topology's consumers, with their peers; one whose info does not
    come within INFO_TIMEOUT_S is a row with the error (its leader died: an election is on)."""
    rows = []
    for name in await _stream_names(js):
        kind = "bucket" if name.startswith(KV_PREFIX) else "stream"
        shown = name.removeprefix(KV_PREFIX) if kind == "bucket" else name
        try:
            info = await asyncio.wait_for(js.stream_info(name), INFO_TIMEOUT_S)
        except NotFoundError:
            continue  # not made yet: `botburrow streams apply` makes it
        except Exception as exc:
            rows.append(Row(kind=kind, name=shown, replicas=0, leader=None, current=0, error=type(exc).__name__))
            continue
        rows.append(_row(kind, shown, info.config.num_replicas or 1, info.cluster))
    replicas = {row.name: row.replicas for row in rows if row.kind == "stream"}
    for consumer in CONSUMERS:
        try:
            info = await asyncio.wait_for(js.consumer_info(consumer.stream, consumer.durable), INFO_TIMEOUT_S)
        except NotFoundError:  # not made yet (a stage creates what is missing at start)
            continue
        except Exception as exc:
            rows.append(Row(kind="consumer", name=f"{consumer.stream}/{consumer.durable}", replicas=0, leader=None,
                            current=0, error=type(exc).__name__))
            continue
        # 0: the consumer follows its stream's count.
        count = info.config.num_replicas or replicas.get(consumer.stream, 1)
        rows.append(_row("consumer", f"{consumer.stream}/{consumer.durable}", count, info.cluster))
    return rows


def render(rows: Sequence[Row]) -> list[str]:
    lines = [f"{'kind':<9}{'name':<34}{'replicas':>9}  {'current':>7}  {'leader':<16}problems"]
    for row in rows:
        problems = [f"lagging: {', '.join(row.lagging)}"] if row.lagging else []
        problems += [f"offline: {', '.join(row.offline)}"] if row.offline else []
        problems += [f"no answer ({row.error})"] if row.error else ["no leader"] if row.leader is None else []
        lines.append(f"{row.kind:<9}{row.name:<34}{row.replicas:>9}  {row.current:>7}  {row.leader or '-':<16}"
                     f"{'; '.join(problems) or 'ok'}")
    bad = [row for row in rows if not row.healthy]
    lines.append(f"{len(rows) - len(bad)} of {len(rows)} healthy" + (": see above" if bad else ""))
    return lines


async def main() -> int:
    settings = load(CliSettings)
    where = without_credentials(settings.nats_url)
    try:
        bus = await asyncio.wait_for(Bus.connect(settings.nats_url, name="botburrow-doctor",
                                                 creds=settings.nats_creds, connect_timeout_s=3), 10)
    except Exception as exc:
        print(f"cannot reach NATS at {where} (set NATS_URL): {type(exc).__name__}")
        return 2
    try:
        rows = await asyncio.wait_for(cluster_report(bus.js), 30)
    except Exception as exc:  # no meta leader, JetStream not enabled: say so in one line
        print(f"JetStream at {where} does not answer: {type(exc).__name__}: {str(exc)[:200]}")
        return 2
    finally:
        await bus.close()
    for line in render(rows):
        print(line)
    return 0 if all(row.healthy for row in rows) else 1
