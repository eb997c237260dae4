"""Who may do what on NATS: one user per stage, derived from the topology table (issue 14).

Every stage connects as its own user in the account `BOTBURROW`. Its allow lists follow from
`topology.py` plus the three small tables below (which stage writes which stream, which buckets and
streams a stage only reads): nothing is listed by hand twice. `botburrow dev` writes them into the
embedded nats-server's config (`server_config`); `deploy/nats/values.yaml` carries the same lists for
the Helm chart (`helm_accounts`), and `deploy/check.py` fails when the two drift apart.

Two users are not stages: `streams-apply` makes and updates the topology (the Kubernetes Job, and
`botburrow dev` before it starts the stages), and `operator` may do anything (the `botburrow` and
`nats` CLIs). Stages may only *read* the topology's configuration, so under authentication a stage
started before its streams exist waits, not ready, until `streams-apply` has made them
(docs/departures.md: contract §5 lets stages create what is missing).

Run `python -m streams.permissions` to print the `config.merge.accounts` block of
deploy/nats/values.yaml, or with `--write deploy/nats/values.yaml` to replace it there.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from botburrow.settings import STAGES
from streams import subjects
from streams.topology import (
    ACTIVATIONS,
    BUCKETS,
    BUDGET_LEDGER,
    CANCELS,
    CONFIG,
    CONFIGS,
    CONSUMERS,
    DECISIONS,
    DLQ,
    HUB_BUDGET,
    LEASES,
    NOTIFICATIONS,
    PAUSED,
    RUNS,
    STREAMS,
    kv_stream,
)

ACCOUNT = "BOTBURROW"
OPERATOR = "operator"
TOPOLOGY = "streams-apply"
USERS = (*STAGES, TOPOLOGY, OPERATOR)
# Every reply (JetStream API answers, fetched messages, PubAcks, KV watches) comes back on an inbox: a
# user's own prefix (`inbox_prefix`), so no stage reads the messages fetched by or answered to another.
INBOX_PREFIX = "_INBOX"

# The stage that publishes each stream's own subjects (contract §5). A stream with subjects and no writer
# here fails `check()`: a new stream must say who writes it. DLQ: every stage its own `agents.dlq.<stage>`.
STREAM_WRITERS = {NOTIFICATIONS.name: "ingest", ACTIVATIONS.name: "scheduler", DECISIONS.name: "scheduler",
                  RUNS.name: "runner", CONFIG.name: "configsync"}
# Buckets a stage reads but does not write (a bucket's writer, topology.BUCKETS, reads it too).
BUCKET_READERS = {CONFIGS.name: ("ingest", "scheduler", "runner"), LEASES.name: ("scheduler",),
                  PAUSED.name: ("scheduler",), CANCELS.name: ("runner",), BUDGET_LEDGER.name: ("scheduler",)}
# Buckets written by more stages than their `writer`: the Hub's request budget, by every stage that calls it.
BUCKET_WRITERS = {HUB_BUDGET.name: ("ingest", "scheduler", "runner", "metrics")}
# Streams a stage reads by subject or sequence, outside any durable: the runner's last-event lookups.
# And metrics' catch-up of unreported consumption (services/metrics/ledger.py).
STREAM_READERS = {RUNS.name: ("runner", "metrics")}


def inbox_prefix(url: str) -> str:
    """`_INBOX_<user>` when the (first) server URL names a user, else nats-py's default `_INBOX`."""
    user = urlsplit(url.split(",")[0].strip()).username
    return f"{INBOX_PREFIX}_{user}" if user else INBOX_PREFIX


def consumer_stage(durable: str) -> str:
    """The stage that reads a durable: its name's first word (`runner-high`, `scheduler-p03`, `metrics`)."""
    return durable.split("-", 1)[0]


def _all_streams() -> list[str]:
    return [spec.name for spec in STREAMS] + [kv_stream(b.name) for b in BUCKETS]


def _topology_info() -> list[str]:
    """What `streams.apply.ensure` asks at every stage start: the configuration of every object."""
    return (["$JS.API.INFO"] + [f"$JS.API.STREAM.INFO.{name}" for name in _all_streams()]
            + [f"$JS.API.CONSUMER.INFO.{c.stream}.{c.durable}" for c in CONSUMERS])


def _gets(stream: str) -> list[str]:
    """Reading a stream's messages by subject or sequence (direct and API gets)."""
    return [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>", f"$JS.API.STREAM.MSG.GET.{stream}"]


def _watches(bucket: str) -> list[str]:
    """A KV watch: an ordered consumer on the bucket's stream. Only on KV streams, which hold no durable:
    `$JS.API.CONSUMER.CREATE.<stream>` with a `name` in the request *updates* an existing consumer of that
    name (nats-server 2.15 did it to the `metrics` durable of RUNS), so no stage may send it for a stream
    with durables."""
    stream = kv_stream(bucket)
    return [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.INFO.{stream}.*", f"$JS.FC.{stream}.>"]


def _buckets_read(stage: str) -> list[str]:
    buckets = [b.name for b in BUCKETS if b.writer == stage or stage in BUCKET_WRITERS.get(b.name, ())]
    return buckets + [name for name, readers in BUCKET_READERS.items() if stage in readers and name not in buckets]


def stage_publish(stage: str) -> list[str]:
    allow = _topology_info()
    allow += [subject for spec in STREAMS if STREAM_WRITERS.get(spec.name) == stage for subject in spec.subjects]
    allow.append(subjects.dlq(stage))
    for c in CONSUMERS:
        if consumer_stage(c.durable) == stage:
            allow += [f"$JS.API.CONSUMER.MSG.NEXT.{c.stream}.{c.durable}", f"$JS.ACK.{c.stream}.{c.durable}.>"]
    allow += [f"$KV.{b.name}.>" for b in BUCKETS if b.writer == stage or stage in BUCKET_WRITERS.get(b.name, ())]
    for bucket in _buckets_read(stage):
        allow += _gets(kv_stream(bucket)) + _watches(bucket)
    for stream in [name for name, readers in STREAM_READERS.items() if stage in readers]:
        allow += _gets(stream)
    return allow


def topology_publish() -> list[str]:
    """`streams-apply`: create and update (never delete or purge) the topology's objects."""
    allow = ["$JS.API.INFO"]
    for name in _all_streams():
        allow += [f"$JS.API.STREAM.{verb}.{name}" for verb in ("INFO", "CREATE", "UPDATE")]
    for c in CONSUMERS:
        at = f"{c.stream}.{c.durable}"
        allow += [f"$JS.API.CONSUMER.INFO.{at}", f"$JS.API.CONSUMER.DURABLE.CREATE.{at}",
                  f"$JS.API.CONSUMER.CREATE.{at}", f"$JS.API.CONSUMER.CREATE.{at}.>"]
    return allow


def permissions(user: str) -> dict[str, dict[str, list[str]]]:
    """The nats-server `permissions` block of `user`."""
    if user == OPERATOR:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    if user == TOPOLOGY:
        publish = topology_publish()
    elif user in STAGES:
        publish = stage_publish(user)
    else:
        raise KeyError(f"{user} is not a NATS user of botburrow ({', '.join(USERS)})")
    return {"publish": {"allow": publish}, "subscribe": {"allow": [f"{INBOX_PREFIX}_{user}.>"]}}


def server_config(passwords: Mapping[str, str]) -> dict[str, Any]:
    """A nats-server config (JSON is valid nats.conf) with every user of `USERS` and its password."""
    users = [{"user": user, "password": passwords[user], "permissions": permissions(user)} for user in USERS]
    return {"accounts": {ACCOUNT: {"jetstream": "enabled", "users": users}}}


def password_env(user: str) -> str:
    """The nats-server container's variable holding `user`'s password in the Helm chart."""
    return "NATS_PASSWORD_" + user.upper().replace("-", "_")


def helm_accounts() -> dict[str, Any]:
    """`config.merge.accounts` of deploy/nats/values.yaml: passwords are `<< $VAR >>` references,
    which the chart writes unquoted so that nats-server reads them from its environment."""
    return server_config({user: f"<< ${password_env(user)} >>" for user in USERS})["accounts"]


def check() -> list[str]:
    """Problems with the tables above against the topology (empty = every object has its stages)."""
    problems = [f"stream {s.name} has subjects but no writer in STREAM_WRITERS"
                for s in STREAMS if s.subjects and s.name not in STREAM_WRITERS and s != DLQ]
    problems += [f"consumer {c.stream}/{c.durable} is read by no stage (its name's first word)"
                 for c in CONSUMERS if consumer_stage(c.durable) not in STAGES]
    problems += [f"bucket {b.name} is written by {b.writer!r}, not a stage or the operator"
                 for b in BUCKETS if b.writer not in (*STAGES, OPERATOR)]
    known_streams, known_buckets = {s.name for s in STREAMS}, {b.name for b in BUCKETS}
    problems += [f"{name} in {table} is not in the topology" for table, names, known in (
        ("STREAM_WRITERS", STREAM_WRITERS, known_streams), ("STREAM_READERS", STREAM_READERS, known_streams),
        ("BUCKET_READERS", BUCKET_READERS, known_buckets), ("BUCKET_WRITERS", BUCKET_WRITERS, known_buckets))
        for name in names if name not in known]
    return problems


def write_values(path: Path) -> None:
    """Replace the `config.merge.accounts` block of a Helm values file (indented 4, ending at a blank line)
    with the generated one; an operator's own users after the generated ones are kept."""
    import yaml

    text = path.read_text()
    start = text.index("  merge:\n    accounts:\n") + len("  merge:\n")
    end = text.index("\n\n", start)
    current = yaml.safe_load(text[start:end].replace("\n    ", "\n")[4:])["accounts"][ACCOUNT]["users"]
    accounts = helm_accounts()
    accounts[ACCOUNT]["users"] += [u for u in current if u.get("user") not in USERS]
    block = yaml.safe_dump({"accounts": accounts}, sort_keys=False, width=200)
    path.write_text(text[:start] + "\n".join("    " + line for line in block.splitlines()) + text[end:])


def main(argv: list[str]) -> int:
    import yaml

    problems = check()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if argv[1:2] == ["--write"] and len(argv) == 3:
        write_values(Path(argv[2]))
        return 0
    print(yaml.safe_dump({"config": {"merge": {"accounts": helm_accounts()}}}, sort_keys=False, width=200), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
