# syntax=docker/dockerfile:1
# The runner image with the coding-agent CLIs and bubblewrap. It is the runtime image plus:
#   @anthropic-ai/claude-code 2.1.197, @aaif/goose-binary-linux-x64 1.52.0, opencode-ai 1.18.33 (npm),
#   aider-chat 0.86.2 (PyPI, in its own virtualenv so its pins never touch ours), bubblewrap (Debian).
# The runner Deployment runs this image (SANDBOX_BACKEND=bwrap: the CLIs run inside bwrap in the
# runner pod); the docker backend uses it as the per-activation container image.
# Build after the runtime image:
#   docker build -f deploy/images/sandbox.Dockerfile \
#     --build-arg BASE_IMAGE=botburrow-runtime:0.1.0 -t botburrow-sandbox:0.1.0 .
# Network at build time: the base image registry, Debian, npm and PyPI only.
ARG BASE_IMAGE=botburrow-runtime:0.1.0
ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${NODE_IMAGE} AS node

FROM ${BASE_IMAGE}
ARG CLAUDE_CODE_VERSION=2.1.197
ARG GOOSE_VERSION=1.52.0
ARG OPENCODE_VERSION=1.18.33
ARG AIDER_VERSION=0.86.2
USER 0:0
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap ca-certificates git \
 && rm -rf /var/lib/apt/lists/*
# The goose package names its command goose-binary-linux-x64; executors call `goose`.
# Node from the official image (Debian's bookworm Node 18 is older than the CLIs like).
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && npm install --global --no-fund --no-audit \
      "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
      "@aaif/goose-binary-linux-x64@${GOOSE_VERSION}" \
      "opencode-ai@${OPENCODE_VERSION}" \
 && npm cache clean --force \
 && ln -s ../lib/node_modules/@aaif/goose-binary-linux-x64/bin/goose /usr/local/bin/goose \
 && python -m venv /opt/aider \
 && /opt/aider/bin/pip install --no-cache-dir "aider-chat==${AIDER_VERSION}" \
 && ln -s /opt/aider/bin/aider /usr/local/bin/aider
ENV DISABLE_AUTOUPDATER=1 \
    GOOSE_DISABLE_KEYRING=1
USER 10001:10001
