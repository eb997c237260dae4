"""The ingest stage: each agent's unread Hub notifications onto NOTIFICATIONS, marked read on the Hub
once JetStream acknowledged them.

- `stage`: `run(ctx)` and `main()`: the polling loop, the Hub client and its readiness check
- `poller`: one polling round: every agent's unread notifications, published, then marked read
"""
