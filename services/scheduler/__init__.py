"""The scheduler stage: notifications in, at most one queued-or-running activation per agent out.

- `stage`: `run(ctx)` and `main()`: the budget gate, the agent directory and one replica
- `replica`: one replica: the partitions it holds, their consumers, the ticks
- `partitions`: which replica owns which partition of the agents (leases in `scheduler-owners`)
- `puller`: a partition's pull consumer read as a stream of batches
- `shell`: the I/O around `SchedulerState` for one partition (state bucket, publishes, decisions)
- `state`: the decisions themselves, without any I/O
- `due`: time-ordered queues of agents, so a tick looks only at what is due
- `budget`: the Hub's budget health (or the local ledger's), cached, turned into refusals per tool type
"""
