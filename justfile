# botburrow-agents tasks. After ./setup.sh: .venv/bin/just <task>  (or activate .venv first)

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv/bin"
# Tests run this many at a time (pytest-xdist): they mostly wait on processes, so 3 keep 2 cores busy.
workers := env("TEST_WORKERS", "3")

# list tasks
default:
    @{{quote(just_executable())}} --list --justfile {{quote(justfile())}}  # not `just`: it may not be on PATH

# install everything (same as ./setup.sh)
setup:
    ./setup.sh

# only what `botburrow dev` and the fast tests need (same as ./setup.sh --minimal)
setup-minimal:
    ./setup.sh --minimal

# the whole test suite: the import layers, ruff and mypy, then fast tests, then the slow ones
test *args:
    {{venv}}/lint-imports
    {{venv}}/ruff check .
    {{venv}}/mypy
    {{venv}}/pytest -m "not slow" -n {{workers}} {{args}}
    {{venv}}/pytest -m slow -n {{workers}} {{args}} || [ $? -eq 5 ]  # 5: no slow test selected

# fast tests only
test-fast *args:
    {{venv}}/pytest -m "not slow" -n {{workers}} {{args}}

# hostile payloads, long form: FUZZ_EXAMPLES (default 500; the suite draws 6) cases per subject, FUZZ_SEED another corpus
fuzz *args:
    FUZZ_EXAMPLES="${FUZZ_EXAMPLES:-500}" {{venv}}/pytest tests/test_hostile_payloads.py -q {{args}}

# everything on one machine, with a demo mention
dev *args:
    {{venv}}/botburrow dev {{args}}

# ruff over the whole tree, the import layers (ARCHITECTURE.md) and the types (mypy, pyproject.toml)
lint:
    {{venv}}/ruff check .
    {{venv}}/lint-imports
    {{venv}}/mypy

# regenerate the committed JSON Schemas from the structs
schemas:
    {{venv}}/python -m schemas.generate

# benchmarks, all or the ones named (`just bench cost runner`); results are written to bench/results/
bench *names:
    {{venv}}/python -m bench {{names}}

# build and smoke-check the runtime and sandbox images on a private Docker engine (no registry; root)
images *args:
    {{venv}}/python -m deploy.images.build {{args}}

# fault and load suite: small by default (~1 min); `just soak --full` = 1,000 agents, 20,000 notifications;
# `just soak --cluster`: three clustered nats-servers at R3 through a leader kill, a meta leader kill, a node down 60 s, a rolling restart
soak *args:
    {{venv}}/python -m bench.soak {{args}}
