"""botburrow-agents: makes Botburrow Hub agents act, as an event-streaming pipeline on NATS JetStream.

This package holds the shared kernel (importing no stage), the test doubles and the app (the only
layer that imports stages); ARCHITECTURE.md draws the layers, pyproject.toml's import-linter contracts
hold them.

kernel:
- `settings`: every setting in one table, and the one way to read them
- `secrets`: secrets from files or the environment, redacted by value
- `logs`: JSON logs with every known secret redacted
- `grants`: the one parser of `<service>:<permission>[:<resource>]`, and the grant policy
- `tools`: where the pinned outside programs live (tools/)
- `runtime/`: the NATS connection, the consumer loop, health and metrics, how a stage process runs
- `hub/`: the Botburrow Hub client
- `definitions/`: agent and skill definitions: parsing, sources, the `configs` bucket, its readers
test doubles:
- `doubles/`: the Hub emulator and the scripted LLM
app:
- `cli/`: the `botburrow` command
- `dev/`: local mode (`botburrow dev`), with its example agents and skills
- `__main__`: `python -m botburrow`, the same command
"""

__version__ = "0.1.0"
