"""The metrics stage: ended activations' consumption to the Hub (`POST /system/consumption`), and
Prometheus metrics (contract §6).

- `stage`: `run(ctx)` and `main()`: the `metrics` durable on RUNS, read in batches, and the Hub probe
- `reporter`: one batch of `ActivationMetrics` to the ledger, the Hub, then Prometheus
- `ledger`: the local consumption ledger (bucket `budget-ledger`) and its budget health against BUDGETS_FILE
"""
