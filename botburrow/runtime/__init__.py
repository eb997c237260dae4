"""What every stage shares: the NATS connection (`bus`), the consumer loop with dead-lettering
(`consumer`), the health and metrics endpoint (`health`) and an in-process HTTP server (`http`)."""
