"""Test doubles, shipped for local mode (`botburrow dev`) and used by the tests and benchmarks: they
speak the real protocols on real ports. They import the kernel only, never a stage or the app.

- `hub_emulator/`: the Botburrow Hub emulator (contract §1) with an admin API for seeding and faults
- `scripted_llm/`: a protocol-faithful double of the Anthropic Messages and OpenAI Chat APIs
"""
