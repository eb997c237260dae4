"""The five stages, each run as its own process (`botburrow <stage>`), each with the same entry point:
`services/<stage>/stage.py` holds `run(ctx)` (the stage's body under `botburrow.runtime.service`) and
`main()`. A stage imports the kernel only, never another stage, a test double or the app (the
import-linter contracts in pyproject.toml; ARCHITECTURE.md).

- `ingest`: the Hub's unread notifications onto NOTIFICATIONS
- `scheduler`: notifications in, at most one queued-or-running activation per agent out
- `runner`: runs activations (with its subsystems: executors, MCP, sandboxes, replay)
- `metrics`: ended activations' consumption to the Hub, and Prometheus metrics
- `configsync`: agent definitions from their source into the `configs` bucket

Nothing here is imported on `import services`: the MCP relay (`services.runner.mcp.relay`) starts in a
sandbox with the standard library only.
"""
