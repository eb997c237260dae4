"""`botburrow doctor` (issue 20): each stream's, bucket's and consumer's replicas, leader, lagging and
offline peers. On three real servers: tests/test_cluster.py (every row back to three current peers)."""

from __future__ import annotations

from nats.js.api import ClusterInfo, PeerInfo

from botburrow.cli.doctor import Row, _row, cluster_report, render
from botburrow.runtime.bus import Bus
from streams.topology import BUCKETS, CONSUMERS, STREAMS


async def test_a_single_server_reports_every_object_whole(bus: Bus) -> None:
    rows = await cluster_report(bus.js)
    names = {(row.kind, row.name) for row in rows}
    assert {("stream", s.name) for s in STREAMS} <= names
    assert {("bucket", b.name) for b in BUCKETS} <= names
    assert {("consumer", f"{c.stream}/{c.durable}") for c in CONSUMERS} <= names
    assert all(row.healthy and row.replicas == 1 for row in rows)
    assert render(rows)[-1] == f"{len(rows)} of {len(rows)} healthy"


def test_a_lagging_an_offline_and_a_leaderless_object_are_named() -> None:
    cluster = ClusterInfo(leader="n1", replicas=[PeerInfo(name="n2", current=False, lag=42),
                                                 PeerInfo(name="n3", current=False, offline=True)])
    row = _row("stream", "RUNS", 3, cluster)
    assert (row.current, row.lagging, row.offline, row.healthy) == (1, ("n2 (42 behind)",), ("n3",), False)
    leaderless = _row("bucket", "leases", 3, ClusterInfo(leader=None, replicas=[]))
    assert not leaderless.healthy
    whole = Row(kind="stream", name="RUNS", replicas=3, leader="n1", current=3)
    lines = render([row, leaderless, whole])
    assert "lagging: n2 (42 behind); offline: n3" in lines[1] and "no leader" in lines[2] and lines[3].endswith("ok")
    assert lines[-1] == "1 of 3 healthy: see above"
