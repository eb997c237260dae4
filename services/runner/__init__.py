"""The runner stage: runs activations (SPEC §4).

`stage` is the consumer loop (priorities, slots, leases, heartbeats, drain); `activation` is one
activation from claim to completion; `loop` the native agent loop over a neutral `transcript`;
`providers` the model adapters; `hubtools` the Hub tools; `posting` exactly-once posting within
limits; `runlog` the event log; `pricing` the price table.
"""


def main() -> None:
    from botburrow.services.runner.stage import main as stage_main

    stage_main()
