"""The configsync stage: agent definitions from their source (`AGENTS_SOURCE`) into the `configs`
bucket, each change announced on CONFIG.

- `stage`: `run(ctx)` and `main()`: open the source, sync forever
- `sync`: sync passes (`Syncer`, `sync_once`) and the polling loop (`sync_forever`)
- `parsing`: parse a snapshot off the event loop, re-parsing only the definitions whose files changed
"""
