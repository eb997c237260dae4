# The one runtime image of every stage: `botburrow ingest|scheduler|runner|metrics|configsync`.
# Build and smoke-check both images with no registry at all: `python -m deploy.images.build`.
# By hand, from the repository root (tested with the classic builder, DOCKER_BUILDKIT=0):
#   docker build -f deploy/images/runtime.Dockerfile -t botburrow-runtime:0.1.0 .
# Network at build time: the base image registry (none with a local PYTHON_IMAGE) and PyPI only.
# PYTHON_IMAGE may be the official image or any Debian-based root with python3 and python3-venv:
# everything goes into a virtualenv at /opt/botburrow, never into the (externally managed) system
# Python, and only `python3` is called (Debian has no `python`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
# certs/ holds ca-bundle.crt only where a TLS-intercepting proxy stands between us and PyPI.
COPY deploy/images/certs/ /tmp/certs/
COPY deploy/images/constraints.txt deploy/images/build-constraints.txt /tmp/
# uv (PyPI, pinned; build stage only) downloads in parallel and installs several times faster than
# pip. Exactly the pinned closure goes in: every package of constraints.txt with --no-deps, binary
# wheels only, then `uv pip check` fails the build if constraints.txt misses a dependency or pins a
# wrong version. The build backend of our own wheel is pinned by build-constraints.txt.
# The closure goes in first, in a layer of its own: a change to our code alone reuses it.
ARG UV_VERSION=0.13.9
RUN if [ -f /tmp/certs/ca-bundle.crt ]; then export PIP_CERT=/tmp/certs/ca-bundle.crt SSL_CERT_FILE=/tmp/certs/ca-bundle.crt; fi \
 && python3 -m venv /tmp/uv \
 && /tmp/uv/bin/pip install --only-binary :all: "uv==${UV_VERSION}" \
 && /tmp/uv/bin/uv venv /opt/botburrow --python "$(command -v python3)" \
 && /tmp/uv/bin/uv pip install --python /opt/botburrow/bin/python --no-deps --only-binary :all: --compile-bytecode \
      -r /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY botburrow ./botburrow
COPY schemas ./schemas
COPY streams ./streams
COPY services ./services
RUN if [ -f /tmp/certs/ca-bundle.crt ]; then export PIP_CERT=/tmp/certs/ca-bundle.crt SSL_CERT_FILE=/tmp/certs/ca-bundle.crt; fi \
 && /tmp/uv/bin/uv build --wheel --out-dir /tmp/wheels --build-constraint /tmp/build-constraints.txt . \
 && /tmp/uv/bin/uv pip install --python /opt/botburrow/bin/python --no-deps --only-binary :all: --compile-bytecode \
      /tmp/wheels/botburrow_agents-*.whl \
 && /tmp/uv/bin/uv pip check --python /opt/botburrow/bin/python

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/botburrow/bin:$PATH
# The virtualenv links to the base image's python3, which this stage shares with the build stage.
COPY --from=build /opt/botburrow /opt/botburrow
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin botburrow
# A numeric USER lets Kubernetes verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["botburrow"]
CMD ["--help"]
