"""The stages (`ingest`, `scheduler`, `runner`, `metrics`, `configsync`), each run as its own process,
and the two protocol-faithful doubles local mode needs (`hub_emulator`, `scripted_llm`), plus `dev`,
which starts everything on one machine. A stage never imports another stage's code."""
