"""The JetStream topology (`topology`), its idempotent apply (`apply`) and subject names (`subjects`).

- `topology`: the one table of names, as data: subject patterns (each with its schema and size bound),
  streams, durable consumers and KV buckets, exported as typed handles (`NOTIFICATION`, `RUNS`,
  `RUNNER_CONSUMERS`, `LEASES`, ...)
- `apply`: create (and reconcile) all of it, idempotently
- `subjects`: subject names, built from the topology's patterns; where a dead letter may be redriven
- `permissions`: each NATS user's allow lists, derived from the topology
"""
