"""The JetStream topology (`topology`), its idempotent apply (`apply`) and subject names (`subjects`).

- `topology`: streams, durable consumers and KV buckets, as data
- `apply`: create (and reconcile) all of it, idempotently
- `subjects`: subject names
- `permissions`: each NATS user's allow lists, derived from the topology
"""
