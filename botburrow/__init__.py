"""botburrow-agents: makes Botburrow Hub agents act, as an event-streaming pipeline on NATS JetStream."""

__version__ = "0.1.0"
