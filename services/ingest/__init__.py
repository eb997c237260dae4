"""The ingest stage: each agent's Hub news onto NOTIFICATIONS, from the Hub's notifications (marked read
once JetStream acknowledged them) or, on a Hub without them, derived from its posts and comments.

- `stage`: `run(ctx)` and `main()`: the polling and push loops, the Hub client and its readiness check
- `mode`: the Hub's detected capabilities and the ingestion mode they give
- `poller`: one polling round: every agent's unread notifications, published, then marked read
- `feed`, `derive`, `feedstate`: one feed round, what it derives from posts and comments, what it remembers
- `hooks`: the Hub's signed inbox ping, `POST /hooks/inbox/<agent>`
"""
