"""What every stage shares: the NATS connection (`bus`), the consumer loop with dead-lettering
(`consumer`), the health and metrics endpoint (`health`) and an in-process HTTP server (`http`).

- `bus`: the one NATS connection of a process, and the one way to publish a payload
- `consumer`: the consumer loop every stage uses, and dead-lettering
- `health`: `/metrics`, `/healthz` and `/readyz` on a service's own port
- `http`: serve an ASGI app inside the current event loop
- `natsserver`: start a real `nats-server` (local mode, tests)
- `service`: how a stage process starts, runs and stops (`StageContext`, `supervise`)
"""
